//! The test bed without root: inside an unprivileged user namespace, and the
//! error it gives when it has no way to get privileges.
//!
//! The outer tests run this same test binary again (the `inner_*` tests,
//! ignored in a normal run) under `unshare --user --map-root-user --net`, or
//! with no privilege at all. When run as root, they first drop to the
//! `nobody` user (65534) so the inner test truly has no privilege in the
//! machine's namespaces.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use mptcp_testbed::{Proto, Transfer, in_initial_user_namespace, relay_path, two_links};

const NOBODY: u32 = 65534;

/// Whether `nobody` can run the program at `path` (every directory above it
/// searchable by others, the file readable and executable by others).
fn runnable_by_others(path: &Path) -> bool {
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode());
    let dirs_ok = path
        .ancestors()
        .skip(1)
        .all(|dir| mode(dir).is_ok_and(|m| m & 0o001 != 0));
    dirs_ok && mode(path).is_ok_and(|m| m & 0o005 == 0o005)
}

/// Runs the inner test `name` of this binary, with `wrapper` (e.g. `unshare`
/// and its arguments) in front, as `nobody` when we are root and can.
/// Returns the output and whether privileges were dropped.
fn run_inner(wrapper: &[&str], name: &str) -> (Output, bool) {
    let exe = std::env::current_exe().expect("path of the test binary");
    let (program, args) = match wrapper.split_first() {
        Some((program, args)) => (*program, args),
        None => (exe.to_str().expect("UTF-8 path"), &[][..]),
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    if !wrapper.is_empty() {
        cmd.arg(&exe);
    }
    cmd.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .current_dir("/");
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let drop_to_nobody = root && runnable_by_others(&exe);
    if drop_to_nobody {
        // SAFETY: runs in the forked child before exec and only makes
        // async-signal-safe syscalls, allocating nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null())
                    | libc::setgid(NOBODY)
                    | libc::setuid(NOBODY)
                    != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("running {program} (is util-linux installed for `unshare`?): {e}")
    });
    (out, drop_to_nobody)
}

fn assert_inner_passed(out: &Output, name: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "inner test {name} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("{stdout}");
}

#[test]
fn test_bed_works_in_an_unprivileged_user_namespace() {
    let name = "inner_two_links_and_relay_path_in_user_namespace";
    let (out, dropped) = run_inner(&["unshare", "--user", "--map-root-user", "--net"], name);
    assert_inner_passed(&out, name);
    println!(
        "ran as uid {}",
        if dropped {
            "65534 (nobody)"
        } else {
            "of the caller"
        }
    );
}

#[test]
#[ignore = "run inside a user namespace by test_bed_works_in_an_unprivileged_user_namespace"]
fn inner_two_links_and_relay_path_in_user_namespace() {
    assert!(
        !in_initial_user_namespace().unwrap(),
        "expected to run in a user namespace of its own"
    );
    let bed = two_links(2, Some(50)).unwrap();
    let transfer = Transfer::start(
        &bed.client,
        &bed.server,
        bed.server_addr(),
        Proto::Mptcp,
        Duration::from_secs(2),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let subflows = bed.client.established_tcp(transfer.port()).unwrap();
    bed.links[1].set_rate(Some(30)).unwrap();
    let report = transfer.wait().unwrap();
    assert!(report.intact(), "{report:?}");
    assert_eq!(subflows.len(), 2, "{subflows:?}");
    println!(
        "in a user namespace: MPTCP {:.1} Mbit/s over 2 links, 2 subflows, checksum ok",
        report.mbit_per_s()
    );
    let rp = relay_path(2, None).unwrap();
    let plain = Transfer::start(
        &rp.lan,
        &rp.dest,
        rp.dest_addr(),
        Proto::Tcp,
        Duration::from_millis(200),
    )
    .unwrap()
    .wait()
    .unwrap();
    assert!(plain.intact() && plain.received_bytes > 0, "{plain:?}");
}

#[test]
fn without_any_privilege_the_error_says_what_is_missing() {
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let exe = std::env::current_exe().unwrap();
    if root && !runnable_by_others(&exe) {
        panic!(
            "{} is not readable by others, so this test cannot drop to nobody: \
             build in a directory that others can read",
            exe.display()
        );
    }
    let name = "inner_require_privileges_explains";
    let (out, _) = run_inner(&[], name);
    assert_inner_passed(&out, name);
}

#[test]
#[ignore = "run without privileges by without_any_privilege_the_error_says_what_is_missing"]
fn inner_require_privileges_explains() {
    let err = mptcp_testbed::require_privileges().unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(msg.contains("not running as root"), "{msg}");
    assert!(
        msg.contains("unshare --user --map-root-user --net"),
        "{msg}"
    );
    assert!(msg.contains("sudo"), "{msg}");
    assert!(msg.contains("CAP_SYS_ADMIN"), "{msg}");
}
