//! The event stream of the daemon's API (`GET /v1/events`, server-sent
//! events), read as a GUI reads it, from a real daemon with a real peer.

mod common;

use common::daemon::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Opens `GET /v1/events` on `d`'s API with `token`; returns the reader,
/// past the response's head, and its status line.
fn open(d: &Device, token: &str) -> (BufReader<TcpStream>, String) {
    let addr = std::fs::read_to_string(d.cfg.join("api-address")).unwrap();
    let mut s = TcpStream::connect(addr.trim()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /v1/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n",
        addr.trim()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
    }
    (r, status)
}

/// The next event: its name and data (chunked transfer framing, and
/// keep-alive comments, skipped).
fn next(r: &mut BufReader<TcpStream>) -> Option<(String, String)> {
    let (mut event, mut data) = (String::new(), String::new());
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(e) = line
            .strip_prefix("event: ")
            .or_else(|| line.strip_prefix("event:"))
        {
            event = e.trim().to_string();
        } else if let Some(d) = line
            .strip_prefix("data: ")
            .or_else(|| line.strip_prefix("data:"))
        {
            data.push_str(d.trim_start());
        } else if line.is_empty() && !event.is_empty() {
            return Some((event, data));
        }
    }
}

#[test]
fn the_event_stream_tells_the_whole_board_then_each_change() {
    let (a, b, _fa, fb) = synced_pair();
    let token = std::fs::read_to_string(a.cfg.join("api-token")).unwrap();
    let (_, refused) = open(&a, "not-the-token");
    assert!(refused.contains("401"), "{refused}");
    let (mut r, ok) = open(&a, token.trim());
    assert!(ok.contains("200"), "{ok}");
    let (first, data) = next(&mut r).expect("a first event");
    assert_eq!(first, "status");
    let board: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(board["folders"][0]["id"], "docs");
    // A file written on b: a's stream tells of it as it arrives.
    let t = Instant::now();
    std::fs::write(fb.join("seen-live.txt"), "live").unwrap();
    let mut kinds = Vec::new();
    let took = loop {
        assert!(
            t.elapsed() < WAIT,
            "no change event; saw {kinds:?}\n{}\n{}",
            a.log(),
            b.log()
        );
        let Some((kind, data)) = next(&mut r) else {
            panic!("the stream ended; saw {kinds:?}");
        };
        if kind == "change" && data.contains("seen-live.txt") {
            break t.elapsed();
        }
        kinds.push(kind);
    };
    eprintln!(
        "events: a change on b's disk was an event on a after {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    // The folder's own events came with it.
    assert!(kinds.iter().any(|k| k == "folder"), "{kinds:?}");
}
