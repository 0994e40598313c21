//! Feeds arbitrary bytes to the frame reader, the message decoder and the
//! validation of every message kind: none of them may panic, hang or
//! allocate beyond the frame limit, whatever a peer sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weave_proto::frame::{decode, read_frame};
use weave_proto::msg::Body;
use weave_proto::validate::{batch_from_wire, chunk_from_wire, request_from_wire};

fuzz_target!(|data: &[u8]| {
    // As a whole stream of frames.
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let mut r = data;
        for _ in 0..64 {
            let Ok(frame) = read_frame(&mut r, "fuzz").await else { break };
            check(&frame);
        }
    });
    // As one frame's payload.
    check(data);
});

fn check(payload: &[u8]) {
    let Ok(env) = decode(payload, "fuzz") else { return };
    let _ = weave_proto::handshake::unsupported_reply(&env);
    match env.body {
        Some(Body::IndexBatch(b)) => {
            let _ = batch_from_wire(b, "fuzz");
        }
        Some(Body::ChunkRequest(r)) => {
            let _ = request_from_wire(&r, "fuzz");
        }
        Some(Body::ChunkData(c)) => {
            let _ = chunk_from_wire(c, "fuzz");
        }
        Some(Body::Hello(h)) => {
            let ours = weave_proto::handshake::hello(weave_core::ReplicaId(7), &[]);
            let _ = weave_proto::handshake::negotiate(&ours, &h, "fuzz");
        }
        _ => {}
    }
}
