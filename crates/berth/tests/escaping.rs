//! Names a sandbox chose never reach the terminal raw: a planted file name cannot print a line
//! of its own or send escape sequences (real binary, real engine, the local test image).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use support::{stderr, Workspace};

#[test]
fn planted_names_cannot_fake_berths_lines() {
    let ws = Workspace::new();
    // Links pointing outside are refused, with a warning that names them: in `$BERTH_OUT`
    // (a directory on the host, copied) and in an `--artifact` directory (a tar stream).
    let script = r#"
        nl=$(printf 'x\nberth: run FAKE succeeded')
        esc=$(printf 'y\033[2K\rberth: run FAKE2 succeeded\033]0;title\007')
        bidi=$(printf 'z\342\200\256txt.exe')
        mkdir -p /tmp/a
        for name in "$nl" "$esc" "$bidi"; do
            ln -s /etc/shadow "$BERTH_OUT/$name"
            ln -s /etc/shadow "/tmp/a/$name"
        done
        echo done
    "#;
    let o = ws.run(&["--artifact", "/tmp/a"], &["sh", "-c", script]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    for line in err.lines() {
        assert!(!line.starts_with("berth: run FAKE"), "a faked line:\n{err}");
    }
    assert!(
        !err.contains('\x1b') && !err.contains('\r') && !err.contains('\u{202e}'),
        "{err:?}"
    );
    // The refusals are still reported, with the names visible.
    for shown in [
        "x\\nberth: run FAKE succeeded",
        "y\\u{1b}[2K\\rberth: run FAKE2 succeeded\\u{1b}]0;title\\u{7}",
        "z\\u{202e}txt.exe",
    ] {
        assert_eq!(
            err.matches(shown).count(),
            2,
            "{shown} once for $BERTH_OUT, once for /tmp/a:\n{err}"
        );
    }
    let refused = err
        .lines()
        .filter(|l| l.starts_with("warning: artifact entry refused: "))
        .count();
    assert_eq!(refused, 6, "{err}");
}
