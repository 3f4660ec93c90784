//! The architectures ptwatch is tested on, and everything about them that
//! the VM machinery needs: Debian's names, the kernel flavour, how a guest
//! boots, and the pinned qemu CPU models with the page-table geometry each
//! one gives.
//!
//! CPU models are pinned because they decide the geometry (virtual-address
//! bits and page-table levels) the kernel runs with, and that geometry is
//! part of what a test proves: a free at the fifth level only exists when
//! the CPU offers five.

use std::{fmt, str::FromStr};

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};

/// An architecture whose Debian kernels are booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Arch {
    X86_64,
    Arm64,
    Riscv64,
}

/// How a kernel of an architecture is booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMethod {
    /// virtme-ng with the host's root file system (read-only, overlays):
    /// host-built binaries run inside as they are. Needs the kernel's
    /// modules (virtiofs), so they are fetched and prepared.
    Virtme,
    /// qemu with a hand-made initramfs holding busybox and the static test
    /// binaries; results come back over the serial console. No modules.
    Initramfs,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Self::X86_64, Self::Arm64, Self::Riscv64];

    /// Short name used on the command line and in cache paths.
    pub fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Arm64 => "arm64",
            Self::Riscv64 => "riscv64",
        }
    }

    /// Debian's architecture name.
    pub fn debian(self) -> &'static str {
        match self {
            Self::X86_64 => "amd64",
            Self::Arm64 => "arm64",
            Self::Riscv64 => "riscv64",
        }
    }

    /// Kernel flavour: the package-name suffix. Cloud flavours are small and
    /// boot fast; riscv64 has only the generic one.
    pub fn flavour(self) -> &'static str {
        match self {
            Self::X86_64 => "cloud-amd64",
            Self::Arm64 => "cloud-arm64",
            Self::Riscv64 => "riscv64",
        }
    }

    /// `uname -m` in the guest.
    pub fn uname_machine(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Arm64 => "aarch64",
            Self::Riscv64 => "riscv64",
        }
    }

    pub fn boot_method(self) -> BootMethod {
        match self {
            Self::X86_64 => BootMethod::Virtme,
            Self::Arm64 | Self::Riscv64 => BootMethod::Initramfs,
        }
    }

    /// The qemu system emulator.
    pub fn qemu(self) -> &'static str {
        match self {
            Self::X86_64 => "qemu-system-x86_64",
            Self::Arm64 => "qemu-system-aarch64",
            Self::Riscv64 => "qemu-system-riscv64",
        }
    }

    /// The CPU model a guest gets unless a test asks for another.
    pub fn default_cpu(self) -> Cpu {
        match self {
            Self::X86_64 => Cpu::X86Max,
            Self::Arm64 => Cpu::Arm64Max,
            Self::Riscv64 => Cpu::Riscv64,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "x86_64" | "amd64" | "x86" => Ok(Self::X86_64),
            "arm64" | "aarch64" => Ok(Self::Arm64),
            "riscv64" | "riscv" => Ok(Self::Riscv64),
            _ => Err(anyhow!("unknown architecture {s:?}; one of: x86_64, arm64, riscv64")),
        }
    }
}

/// A pinned qemu CPU model (TCG). See [`Cpu::geometry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Cpu {
    /// `-cpu max` (what virtme-ng passes without KVM): LA57, so Debian's
    /// kernels (CONFIG_X86_5LEVEL) run with 57-bit VA and 5 levels.
    X86Max,
    /// `-cpu max,pauth-impdef=on`: FEAT_LPA2, so a kernel built for 52-bit
    /// VA with 4 KiB pages runs with 5 levels. `pauth-impdef` replaces the
    /// architected QARMA pointer-authentication hash, which is slow to
    /// emulate, by qemu's cheap one.
    Arm64Max,
    /// `-cpu cortex-a57`: ARMv8.0, no LPA2: 48-bit VA, 4 levels.
    Arm64CortexA57,
    /// `-cpu rv64` of this host's qemu (7.2, Debian 12): satp modes sv39
    /// and sv48, no sv57, so the kernel (built for 5 levels) runs sv48:
    /// 48-bit VA, 4 levels (`no4lvl` on the command line gives sv39).
    Riscv64,
}

/// Virtual-address size and page-table levels (4 KiB pages everywhere here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    /// Bits of user+kernel virtual address the page tables translate.
    pub va_bits: u32,
    pub levels: u32,
}

impl Cpu {
    pub fn arch(self) -> Arch {
        match self {
            Self::X86Max => Arch::X86_64,
            Self::Arm64Max | Self::Arm64CortexA57 => Arch::Arm64,
            Self::Riscv64 => Arch::Riscv64,
        }
    }

    /// The `-cpu` argument.
    pub fn qemu_arg(self) -> &'static str {
        match self {
            Self::X86Max => "max",
            Self::Arm64Max => "max,pauth-impdef=on",
            Self::Arm64CortexA57 => "cortex-a57",
            Self::Riscv64 => "rv64",
        }
    }

    /// Short name for results and the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::X86Max => "max",
            Self::Arm64Max => "max",
            Self::Arm64CortexA57 => "cortex-a57",
            Self::Riscv64 => "rv64",
        }
    }

    /// The largest geometry the CPU offers. The kernel may use less (its
    /// configured VA size); what a guest really ran with is read inside it
    /// and reported by vm-test.
    pub fn geometry(self) -> Geometry {
        match self {
            Self::X86Max => Geometry { va_bits: 57, levels: 5 },
            Self::Arm64Max => Geometry { va_bits: 52, levels: 5 },
            Self::Arm64CortexA57 => Geometry { va_bits: 48, levels: 4 },
            Self::Riscv64 => Geometry { va_bits: 48, levels: 4 },
        }
    }

    pub fn parse_for(arch: Arch, s: &str) -> Result<Self> {
        [Self::X86Max, Self::Arm64Max, Self::Arm64CortexA57, Self::Riscv64]
            .into_iter()
            .find(|c| c.arch() == arch && c.name() == s)
            .ok_or_else(|| anyhow!("no CPU model {s:?} for {arch}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails with the error it unwraps")]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for arch in Arch::ALL {
            assert_eq!(arch.name().parse::<Arch>().unwrap(), arch);
            assert_eq!(arch.default_cpu().arch(), arch);
            let cpu = arch.default_cpu();
            assert_eq!(Cpu::parse_for(arch, cpu.name()).unwrap(), cpu);
        }
        assert_eq!("aarch64".parse::<Arch>().unwrap(), Arch::Arm64);
        assert!(Cpu::parse_for(Arch::X86_64, "cortex-a57").is_err());
    }
}
