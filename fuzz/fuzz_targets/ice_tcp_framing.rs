#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    auralink_fuzz::ice_tcp_framing(data);
});
