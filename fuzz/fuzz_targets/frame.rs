//! Any TCP stream prefix: framing must not panic, and a frame it reports must
//! lie inside the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use siphon::sip::framing::frame_len;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((skip, len))) = frame_len(data) {
        assert!(skip + len <= data.len());
        let _ = siphon::sip::parse(bytes::Bytes::copy_from_slice(&data[skip..skip + len]));
    }
});
