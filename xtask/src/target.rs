//! The platforms ptwatch is released for, and everything that differs
//! between them: the Rust target, the C cross compiler that `ring` needs,
//! how the binary is made static, and the names other tools give the
//! architecture (Debian, OCI, `uname -m`).
//!
//! Every release binary is static, so one file runs on any distribution and
//! in a `FROM scratch` image. musl gives that directly; riscv64 has no musl
//! target in rustup, so it is glibc linked with `+crt-static`.
use std::{fmt, str::FromStr};

pub mod elf;

/// A release platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    X86_64,
    Aarch64,
    Riscv64,
}

/// The C library a target links (statically).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Libc {
    Musl,
    Glibc,
}

impl Target {
    pub const ALL: [Self; 3] = [Self::X86_64, Self::Aarch64, Self::Riscv64];

    /// The rustup/cargo target triple.
    pub fn triple(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64-unknown-linux-musl",
            Self::Aarch64 => "aarch64-unknown-linux-musl",
            // rustup has no riscv64gc-unknown-linux-musl.
            Self::Riscv64 => "riscv64gc-unknown-linux-gnu",
        }
    }

    /// The architecture as `uname -m`, cargo's `target_arch` and release
    /// file names spell it.
    pub fn arch(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
            Self::Riscv64 => "riscv64",
        }
    }

    /// The architecture as Debian (dpkg, apt) names it.
    pub fn debian_arch(self) -> &'static str {
        match self {
            Self::X86_64 => "amd64",
            Self::Aarch64 => "arm64",
            Self::Riscv64 => "riscv64",
        }
    }

    /// The OCI image platform (`os/architecture`): Go's GOARCH names, which
    /// are Debian's for these three.
    pub fn oci_platform(self) -> OciPlatform {
        OciPlatform { os: "linux", architecture: self.debian_arch() }
    }

    pub fn libc(self) -> Libc {
        match self {
            Self::X86_64 | Self::Aarch64 => Libc::Musl,
            Self::Riscv64 => Libc::Glibc,
        }
    }

    /// The C compiler for the target's C code (`ring`'s assembly and C).
    /// x86_64 musl: Debian's `musl-gcc` wrapper (musl headers); the others:
    /// Debian's cross gcc, whose headers serve `ring` (it calls no libc).
    pub fn c_compiler(self) -> &'static str {
        match self {
            Self::X86_64 => "musl-gcc",
            Self::Aarch64 => "aarch64-linux-gnu-gcc",
            Self::Riscv64 => "riscv64-linux-gnu-gcc",
        }
    }

    /// The binutils tool `name` (`ar`, `strip`, `objcopy`) for this target:
    /// the host's for x86_64, Debian's cross binutils (pulled in by the cross
    /// gcc) for the others. The cc crate would otherwise look for
    /// `aarch64-linux-musl-ar`, which Debian lacks.
    pub fn binutil(self, name: &str) -> String {
        match self {
            Self::X86_64 => name.to_owned(),
            Self::Aarch64 => format!("aarch64-linux-gnu-{name}"),
            Self::Riscv64 => format!("riscv64-linux-gnu-{name}"),
        }
    }

    /// The linker cargo must use, when rustc's default (`cc`, the host's
    /// gcc) cannot link this target. musl targets carry their own C
    /// runtime (rustc's self-contained crt objects), so any gcc of the
    /// right architecture links them; glibc's static libraries come with
    /// Debian's cross libc6-dev.
    fn linker(self) -> Option<&'static str> {
        match self {
            Self::X86_64 => None,
            Self::Aarch64 | Self::Riscv64 => Some(self.c_compiler()),
        }
    }

    /// Extra rustc flags for this target: glibc links dynamically unless
    /// told otherwise.
    fn rustflags(self) -> &'static [&'static str] {
        match self.libc() {
            Libc::Musl => &[],
            Libc::Glibc => &["-C", "target-feature=+crt-static"],
        }
    }

    /// A symbol the `ptwatch` binary must define: on x86_64 musl, the
    /// `memcpy` every call is routed to (`--wrap=memcpy`, agent/build.rs).
    /// The release build's link-time optimisation drops it when nothing
    /// calls it, so its presence says the routing is in place.
    pub fn required_symbol(self) -> Option<&'static str> {
        match self {
            Self::X86_64 => Some("__wrap_memcpy"),
            Self::Aarch64 | Self::Riscv64 => None,
        }
    }

    /// Debian packages that provide [`Self::c_compiler`], the archiver and
    /// the C library headers/archives.
    pub fn debian_packages(self) -> &'static [&'static str] {
        match self {
            Self::X86_64 => &["musl-tools"],
            Self::Aarch64 => &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"],
            Self::Riscv64 => &["gcc-riscv64-linux-gnu", "libc6-dev-riscv64-cross"],
        }
    }

    /// Environment for `cargo … --target <triple>`: cargo's per-target
    /// linker and rustflags, the cc crate's per-target compiler and
    /// archiver. Per-target variables leave the host's build scripts alone.
    pub fn cargo_env(self) -> Vec<(String, String)> {
        let cargo_key = self.triple().to_uppercase().replace('-', "_");
        let cc_key = self.triple().replace('-', "_");
        let mut env =
            vec![(format!("CC_{cc_key}"), self.c_compiler().to_owned()), (format!("AR_{cc_key}"), self.binutil("ar"))];
        if let Some(linker) = self.linker() {
            env.push((format!("CARGO_TARGET_{cargo_key}_LINKER"), linker.to_owned()));
        }
        if !self.rustflags().is_empty() {
            env.push((format!("CARGO_TARGET_{cargo_key}_RUSTFLAGS"), self.rustflags().join(" ")));
        }
        env
    }

    /// The ELF machine the binaries must carry.
    pub fn elf_machine(self) -> elf::Machine {
        match self {
            Self::X86_64 => elf::Machine::X86_64,
            Self::Aarch64 => elf::Machine::Aarch64,
            Self::Riscv64 => elf::Machine::Riscv,
        }
    }

    /// The target whose binaries this machine runs natively.
    pub fn host() -> Option<Self> {
        Self::ALL.into_iter().find(|target| target.arch() == std::env::consts::ARCH)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.triple())
    }
}

/// An OCI image platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OciPlatform {
    pub os: &'static str,
    pub architecture: &'static str,
}

impl fmt::Display for OciPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
    }
}

/// What `--target` selects: one or more release targets, or `all`.
/// Accepts the triple, the architecture (`aarch64`) or Debian's name
/// (`arm64`) of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets(pub Vec<Target>);

impl FromStr for Targets {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "all" {
            return Ok(Self(Target::ALL.to_vec()));
        }
        let mut targets = Vec::new();
        for name in text.split(',') {
            let target = Target::ALL
                .into_iter()
                .find(|target| [target.triple(), target.arch(), target.debian_arch()].contains(&name))
                .ok_or_else(|| {
                    let known: Vec<_> = Target::ALL.iter().map(|target| target.triple()).collect();
                    format!("unknown target `{name}`: expected `all` or one of {}", known.join(", "))
                })?;
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        Ok(Self(targets))
    }
}

#[cfg(test)]
mod tests {
    use super::{Target, Targets};

    #[test]
    fn targets_parse_by_triple_arch_and_debian_name() {
        assert_eq!("all".parse::<Targets>(), Ok(Targets(Target::ALL.to_vec())));
        assert_eq!(
            "arm64,x86_64-unknown-linux-musl,riscv64".parse::<Targets>(),
            Ok(Targets(vec![Target::Aarch64, Target::X86_64, Target::Riscv64]))
        );
        let err = "armhf".parse::<Targets>().expect_err("armhf is no release target");
        assert!(err.contains("unknown target `armhf`"), "{err}");
    }

    #[test]
    fn cross_environment_names_match_cargo_and_cc() {
        let env = Target::Riscv64.cargo_env();
        let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("CC_riscv64gc_unknown_linux_gnu"), Some("riscv64-linux-gnu-gcc"));
        assert_eq!(get("CARGO_TARGET_RISCV64GC_UNKNOWN_LINUX_GNU_LINKER"), Some("riscv64-linux-gnu-gcc"));
        assert_eq!(get("CARGO_TARGET_RISCV64GC_UNKNOWN_LINUX_GNU_RUSTFLAGS"), Some("-C target-feature=+crt-static"));
        assert_eq!(Target::Aarch64.oci_platform().to_string(), "linux/arm64");
    }
}
