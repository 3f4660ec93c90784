//! Checks that a built binary is what a release promises: an ELF executable
//! for the right machine that needs no program interpreter (no dynamic
//! loader, no shared libraries), so it runs on any distribution and in a
//! `FROM scratch` image. Reading the ELF headers directly keeps the check
//! independent of `file`'s wording and of whether `file` is installed.
use std::{fmt, fs, path::Path};

use anyhow::{bail, ensure, Context as _, Result};

/// `e_machine` values (ELF gABI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    X86_64,
    Aarch64,
    Riscv,
    Other(u16),
}

impl Machine {
    fn from_raw(raw: u16) -> Self {
        match raw {
            62 => Self::X86_64,
            183 => Self::Aarch64,
            243 => Self::Riscv,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::X86_64 => f.write_str("x86-64"),
            Self::Aarch64 => f.write_str("AArch64"),
            Self::Riscv => f.write_str("RISC-V"),
            Self::Other(raw) => write!(f, "e_machine {raw}"),
        }
    }
}

/// How an executable is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linking {
    /// `ET_EXEC` without an interpreter.
    Static,
    /// `ET_DYN` without an interpreter: relocates itself (musl's default).
    StaticPie,
    /// Has `PT_INTERP`: needs a dynamic loader at run time.
    Dynamic,
}

impl fmt::Display for Linking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Static => "statically linked",
            Self::StaticPie => "static-pie linked",
            Self::Dynamic => "dynamically linked",
        })
    }
}

/// What the headers of an executable say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Executable {
    pub machine: Machine,
    pub linking: Linking,
}

const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_INTERP: u32 = 3;

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Parse a little-endian ELF64 executable's header and program headers
/// (all three release targets are little-endian 64-bit).
pub fn inspect_bytes(bytes: &[u8]) -> Result<Executable> {
    ensure!(bytes.get(..4) == Some(b"\x7fELF"), "not an ELF file");
    ensure!(bytes.get(4) == Some(&2), "not a 64-bit ELF file");
    ensure!(bytes.get(5) == Some(&1), "not a little-endian ELF file");
    let truncated = || anyhow::anyhow!("truncated ELF header");
    let kind = u16_at(bytes, 16).ok_or_else(truncated)?;
    let machine = Machine::from_raw(u16_at(bytes, 18).ok_or_else(truncated)?);
    let phoff = usize::try_from(u64_at(bytes, 32).ok_or_else(truncated)?)?;
    let phentsize = usize::from(u16_at(bytes, 54).ok_or_else(truncated)?);
    let phnum = usize::from(u16_at(bytes, 56).ok_or_else(truncated)?);
    let mut interp = false;
    for index in 0..phnum {
        let p_type = u32_at(bytes, phoff + index * phentsize).context("truncated program header table")?;
        interp |= p_type == PT_INTERP;
    }
    let linking = match (kind, interp) {
        (_, true) => Linking::Dynamic,
        (ET_EXEC, false) => Linking::Static,
        (ET_DYN, false) => Linking::StaticPie,
        (other, false) => bail!("not an executable (e_type {other})"),
    };
    Ok(Executable { machine, linking })
}

/// Fail unless `path` is a static executable for `machine`.
pub fn require_static(path: &Path, machine: Machine) -> Result<Executable> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let exe = inspect_bytes(&bytes).with_context(|| format!("inspecting {}", path.display()))?;
    ensure!(exe.machine == machine, "{} is built for {}, not {machine}", path.display(), exe.machine);
    ensure!(
        exe.linking != Linking::Dynamic,
        "{} is dynamically linked: it would need a loader and shared libraries that a scratch image or another distribution lacks",
        path.display()
    );
    Ok(exe)
}

const SHT_SYMTAB: u32 = 2;
const SHN_UNDEF: u16 = 0;

/// The fields of an ELF64 section header that finding a symbol needs.
struct Section {
    kind: u32,
    offset: usize,
    size: usize,
    /// For a symbol table: the section of its string table.
    link: usize,
    entry_size: usize,
}

fn section(bytes: &[u8], index: usize) -> Result<Section> {
    let truncated = || anyhow::anyhow!("truncated section header table");
    let table = usize::try_from(u64_at(bytes, 40).ok_or_else(truncated)?)?;
    let header_size = usize::from(u16_at(bytes, 58).ok_or_else(truncated)?);
    let at = table + index * header_size;
    let word = |offset| -> Result<usize> { Ok(usize::try_from(u64_at(bytes, at + offset).ok_or_else(truncated)?)?) };
    Ok(Section {
        kind: u32_at(bytes, at + 4).ok_or_else(truncated)?,
        offset: word(24)?,
        size: word(32)?,
        link: usize::try_from(u32_at(bytes, at + 40).ok_or_else(truncated)?)?,
        entry_size: word(56)?,
    })
}

/// Whether the executable's symbol table (`.symtab`, which release builds
/// keep) defines `name`; an error if it has none (stripped), so that a
/// missing table is not taken for a missing symbol.
pub fn defines_symbol(bytes: &[u8], name: &str) -> Result<bool> {
    inspect_bytes(bytes)?;
    let count = usize::from(u16_at(bytes, 60).context("truncated ELF header")?);
    let symbol_table = (0..count)
        .map(|index| section(bytes, index))
        .find(|found| found.as_ref().map_or(true, |section| section.kind == SHT_SYMTAB && section.entry_size > 0))
        .context("no symbol table (a stripped binary?)")??;
    let strings = section(bytes, symbol_table.link)?;
    let strings = bytes.get(strings.offset..strings.offset + strings.size).context("truncated string table")?;
    let symbols =
        bytes.get(symbol_table.offset..symbol_table.offset + symbol_table.size).context("truncated symbol table")?;
    // Elf64_Sym: st_name (u32) at 0, st_shndx (u16) at 6.
    for symbol in symbols.chunks_exact(symbol_table.entry_size) {
        let (Some(name_at), Some(section_index)) = (u32_at(symbol, 0), u16_at(symbol, 6)) else {
            bail!("truncated symbol");
        };
        let symbol_name =
            strings.get(usize::try_from(name_at)?..).and_then(|rest| rest.split(|&byte| byte == 0).next());
        if section_index != SHN_UNDEF && symbol_name == Some(name.as_bytes()) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::{defines_symbol, inspect_bytes, Linking, Machine};

    #[test]
    fn this_test_binary_is_a_dynamic_host_executable() {
        let exe = std::env::current_exe().expect("this test's path");
        let found = inspect_bytes(&std::fs::read(exe).expect("read this test binary")).expect("an ELF executable");
        assert_eq!(found.linking, Linking::Dynamic, "cargo test binaries link glibc dynamically");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(found.machine, Machine::X86_64);
        }
    }

    #[test]
    fn finds_the_symbols_this_test_binary_defines_and_no_others() {
        let bytes = std::fs::read(std::env::current_exe().expect("this test's path")).expect("read this test binary");
        assert!(defines_symbol(&bytes, "main").expect("an ELF executable"));
        assert!(!defines_symbol(&bytes, "__wrap_memcpy").expect("an ELF executable"));
        assert!(!defines_symbol(&bytes, "mai").expect("an ELF executable"));
        // No section headers, as if stripped of its symbol table: an error,
        // not "not defined".
        let mut without_sections = bytes;
        without_sections[60..62].copy_from_slice(&0u16.to_le_bytes());
        assert!(defines_symbol(&without_sections, "main").is_err());
    }

    #[test]
    fn rejects_what_is_not_elf() {
        assert!(inspect_bytes(b"#!/bin/sh\n").is_err());
        assert!(inspect_bytes(b"\x7fELF\x02\x01").is_err());
    }
}
