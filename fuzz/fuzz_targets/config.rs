//! `berth.toml` and the user config: parsing and every check, then what the CLI does with an
//! accepted file (CPU setting, pools, profiles).
#![no_main]

use berth_core::{config, profile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse("berth.toml", text) {
        Ok(c) => {
            let _ = c.nano_cpus();
            for (name, pool) in &c.pool {
                let _ = pool.to_spec(name);
            }
            let layers = [("berth.toml".to_string(), c.profiles.clone())];
            let _ = profile::resolve_all(profile::builtins("0.0.0"), &layers);
            let _ = config::ConfigFile::default().merged(c);
        }
        Err(e) => assert!(e.to_string().starts_with("berth.toml:"), "{e}"),
    }
});
