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

/// One request to `d`'s API: its status line and body.
fn request(
    d: &Device,
    method: &str,
    path: &str,
    host: Option<&str>,
    token: &str,
) -> (String, String) {
    let addr = std::fs::read_to_string(d.cfg.join("api-address")).unwrap();
    let addr = addr.trim();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let host = host.unwrap_or(addr);
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    std::io::Read::read_to_string(&mut s, &mut all).unwrap();
    let status = all.lines().next().unwrap_or("").to_string();
    let body = all.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn folders_and_peers_pause_and_resume_through_the_api_and_other_hosts_are_refused() {
    let (a, b, fa, fb) = synced_pair();
    let token = std::fs::read_to_string(a.cfg.join("api-token")).unwrap();
    let token = token.trim();
    // A page of another site, its name pointed here (DNS rebinding): refused.
    let (st, _) = request(&a, "GET", "/v1/status", Some("evil.example:80"), token);
    assert!(st.contains("403"), "{st}");
    let (st, _) = request(&a, "GET", "/v1/status", Some("localhost"), token);
    assert!(st.contains("200"), "{st}");
    let (st, body) = request(&a, "POST", "/v1/folders/docs/pause", None, token);
    assert!(
        st.contains("200") && body.contains("\"done\":true") && body.contains("folder docs paused"),
        "{st} {body}"
    );
    wait_for("docs paused on a", &[&a, &b], || {
        a.status()
            .is_some_and(|s| s["folders"][0]["state"] == "paused")
    });
    std::fs::write(fa.join("while-paused.txt"), "x").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(read(&fb.join("while-paused.txt")).is_none());
    let (_, body) = request(&a, "POST", "/v1/folders/docs/resume", None, token);
    assert!(body.contains("folder docs resumed"), "{body}");
    wait_for("the file on b", &[&a, &b], || {
        read(&fb.join("while-paused.txt")).is_some()
    });
    let (_, body) = request(&a, "POST", "/v1/peers/b/pause", None, token);
    assert!(body.contains("peer b paused"), "{body}");
    wait_for("b paused on a", &[&a, &b], || {
        a.status()
            .is_some_and(|s| s["peers"][0]["state"] == "paused")
    });
    let (_, body) = request(&a, "POST", "/v1/peers/b/resume", None, token);
    assert!(body.contains("peer b resumed"), "{body}");
    // What is not there is said; an action that is not is 404.
    let (_, body) = request(&a, "POST", "/v1/folders/nosuch/pause", None, token);
    assert!(
        body.contains("\"done\":false") && body.contains("nosuch"),
        "{body}"
    );
    let (_, body) = request(&a, "POST", "/v1/peers/nobody/pause", None, token);
    assert!(
        body.contains("\"done\":false") && body.contains("nobody"),
        "{body}"
    );
    let (st, _) = request(&a, "POST", "/v1/peers/b/explode", None, token);
    assert!(st.contains("404"), "{st}");
    let (st, _) = request(&a, "POST", "/v1/folders/docs/pause", None, "wrong");
    assert!(st.contains("401"), "{st}");
    assert!(a
        .status()
        .is_some_and(|s| s["folders"][0]["state"] != "paused"));
}
