#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    auralink_fuzz::sdpfrag_candidates(data);
});
