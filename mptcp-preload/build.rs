//! Links the unwinder that `catch_unwind` in every hook needs statically
//! (`libgcc_eh.a`) instead of making every preloaded program load
//! `libgcc_s.so.1`: that library's constructor probes the CPU with `cpuid`,
//! which traps to the hypervisor in a virtual machine and made a preloaded
//! `/bin/true` start 1.3 times slower. rustc asks the linker for `-lgcc_s`;
//! a linker script of that name in a directory searched first answers with
//! `libgcc_eh.a`. Only the cdylib is linked this way; its version script
//! keeps the unwinder's symbols local, so the library still exports only its
//! hooks.
//!
//! A second linker script moves the PLT in front of `.text`, next to
//! `.init` and the library's constructor (lld puts it after `.text`, 370 KiB
//! further): every program started under the library runs through it at
//! exit (`__cxa_finalize` from crtbegin's destructor), and a page of code
//! faulted in costs the whole 64 KiB window around it (fault-around), about
//! 0.8% of a preloaded `/bin/true` on a virtual machine.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !linux_gnu {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = out.join("static-unwinder");
    std::fs::create_dir_all(&dir).expect("creating OUT_DIR/static-unwinder");
    std::fs::write(
        dir.join("libgcc_s.so"),
        "/* -lgcc_s for libmptcp_preload.so: the unwinder, linked statically */\nINPUT ( -lgcc_eh )\n",
    )
    .expect("writing the libgcc_s.so linker script");
    println!("cargo:rustc-cdylib-link-arg=-L{}", dir.display());

    // INSERT keeps the linker's own layout for everything else.
    let plt_first = out.join("plt-first.ld");
    std::fs::write(
        &plt_first,
        "/* libmptcp_preload.so: the PLT next to .init */\nSECTIONS { .plt : { *(.plt) } } INSERT BEFORE .text;\n",
    )
    .expect("writing the plt-first linker script");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-T,{}", plt_first.display());
}
