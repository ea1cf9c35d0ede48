//! Agent stdout (Claude stream-json, Codex JSONL, text): bytes in, events out. No panic, the
//! same events however the bytes are chunked, and every non-empty line counted.
#![no_main]

use berth_agents::{parse_all, render, AgentParser, OutputFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The chunk size comes from the input, so each input is one deterministic split.
    let chunk = 1 + data.len() % 13;
    for format in OutputFormat::ALL {
        let (whole, _) = parse_all(format, data);
        let mut parser = AgentParser::new(format);
        let mut pieces = Vec::new();
        for part in data.chunks(chunk) {
            pieces.extend(parser.push(part));
        }
        pieces.extend(parser.finish());
        assert_eq!(whole, pieces, "{format}: chunks of {chunk}");
        let lines = data
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .count() as u64;
        assert_eq!(parser.lines(), lines);
        for event in &whole {
            let _ = render(event, false);
        }
    }
});
