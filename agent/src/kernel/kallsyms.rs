//! Function symbols of the running kernel, from `/proc/kallsyms`: what a
//! kprobe can attach to.

use std::{collections::HashSet, fs, io};

/// Text (function) symbols, without module suffixes.
pub struct Kallsyms {
    functions: HashSet<String>,
}

impl Kallsyms {
    pub fn load() -> io::Result<Self> {
        Ok(Self::parse(&fs::read_to_string("/proc/kallsyms")?))
    }

    fn parse(text: &str) -> Self {
        let functions = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let _address = fields.next()?;
                let kind = fields.next()?;
                let name = fields.next()?;
                matches!(kind, "T" | "t" | "W" | "w").then(|| name.to_owned())
            })
            .collect();
        Self { functions }
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.functions.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_symbols_only() {
        let syms = Kallsyms::parse(
            "ffffffff815f6430 T tlb_remove_table\nffffffff816b3ac0 t free_pte\nffffffff82000000 D some_data\nffffffffc0000000 t mod_fn\t[ext4]\n",
        );
        assert!(syms.has_function("tlb_remove_table"));
        assert!(syms.has_function("free_pte"));
        assert!(syms.has_function("mod_fn"));
        assert!(!syms.has_function("some_data"));
    }

    #[test]
    fn running_kernel_has_tlb_remove_table() {
        assert!(Kallsyms::load().expect("read /proc/kallsyms").has_function("tlb_remove_table"));
    }
}
