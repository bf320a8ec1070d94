//! The Debian package, built by `contrib/deb/build` (cargo-deb), unpacked
//! into a fresh root with `dpkg -x`, and run from there: the installed
//! command finds its installed preload library.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mptcp_core::socket::{Fallback, bind_listener, is_mptcp};
use mptcp_testbed::Host;

const MPTCP: &str = env!("CARGO_BIN_EXE_mptcp");

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Builds the package into `dir` from the outputs of this test's own
/// build; its path.
fn build_package(dir: &Path) -> PathBuf {
    let found = Command::new("cargo-deb").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "cargo-deb is needed: cargo install --locked cargo-deb"
    );
    let profile_dir = Path::new(MPTCP).parent().unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // `cargo test` builds the command (this very binary's sibling) but not
    // the libraries' cdylib and staticlib outputs: those are built here,
    // and all is packaged fast (building the command again with the
    // package's own feature set and compressing hard took 50 s of the suite).
    run(Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "mptcp-preload",
            "-p",
            "mptcp-ffi",
            "--lib",
        ])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(root));
    run(Command::new(root.join("contrib/deb/build"))
        .args(["--prebuilt", "--fast", "--output"])
        .arg(dir)
        .env("CARGO_TARGET_DIR", target_dir));
    let debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    debs[0].clone()
}

#[test]
fn the_deb_installs_into_a_fresh_root_and_runs_from_there() {
    mptcp_testbed::require_privileges().unwrap();
    let dir = std::env::temp_dir().join(format!("mptcp-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let deb = build_package(&dir);

    let listing =
        String::from_utf8(run(Command::new("dpkg-deb").arg("-c").arg(&deb)).stdout).unwrap();
    for path in [
        "./usr/bin/mptcp",
        "./usr/lib/mptcp/libmptcp_preload.so",
        "./usr/lib/libmptcp.so.0.1.0",
        "./usr/lib/libmptcp.so -> libmptcp.so.0",
        "./usr/lib/libmptcp.a",
        "./usr/include/mptcp.h",
        "./usr/lib/pkgconfig/mptcp.pc",
        "./usr/lib/pkgconfig/mptcp-static.pc",
        "./usr/lib/systemd/system/mptcp-relay-remote.service",
        "./usr/lib/systemd/system/mptcp-relay-local.service",
        "./usr/lib/systemd/system/mptcp-paths.service",
        "./usr/share/bash-completion/completions/mptcp",
        "./usr/share/zsh/vendor-completions/_mptcp",
        "./usr/share/fish/vendor_completions.d/mptcp.fish",
        "./usr/share/man/man1/mptcp.1.gz",
        "./usr/share/man/man1/mptcp-relay-remote.1.gz",
        "./usr/share/doc/mptcp/copyright",
        "./usr/share/doc/mptcp/examples/relay.toml",
    ] {
        assert!(
            listing.contains(path),
            "{path} not in the package:\n{listing}"
        );
    }

    let root = dir.join("root");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/mptcp-relay-remote.service"))
            .unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/mptcp relay remote"),
        "{unit}"
    );
    let pc = std::fs::read_to_string(root.join("usr/lib/pkgconfig/mptcp.pc")).unwrap();
    assert!(pc.contains("prefix=/usr\n"), "{pc}");

    let mptcp = root.join("usr/bin/mptcp");
    let host = Host::new("deb").unwrap();
    let probe = run(host.command(mptcp.to_str().unwrap()).arg("probe"));
    assert!(
        String::from_utf8_lossy(&probe.stdout).contains("MPTCP"),
        "{probe:?}"
    );
    run(host
        .command(mptcp.to_str().unwrap())
        .args(["run", "--", "true"]));

    // curl under the installed command and preload library, to an MPTCP
    // listener: the accepted connection is MPTCP only if curl's was.
    let listener = host.run(|| bind_listener("127.0.0.1:0", Fallback::Fail).unwrap());
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = conn.read(&mut request).unwrap();
        let mptcp = is_mptcp(conn.as_fd()).unwrap();
        conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhello\n")
            .unwrap();
        mptcp
    });
    let curl = run(host.command(mptcp.to_str().unwrap()).args([
        "run",
        "--",
        "curl",
        "-sS",
        &format!("http://{addr}/"),
    ]));
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "hello\n");
    assert!(server.join().unwrap(), "curl's connection was MPTCP");
    std::fs::remove_dir_all(&dir).unwrap();
}
