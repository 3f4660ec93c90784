//! Function symbols of the running kernel, from `/proc/kallsyms`: what a
//! kprobe can attach to.
//!
//! Only the names asked about are kept: the file lists well over 100,000
//! symbols (10 MB of text), and holding them all once cost the agent more
//! memory at start-up than everything else it keeps.

use std::{
    collections::HashSet,
    fs::File,
    io::{self, BufReader},
};

/// Which of the wanted names are text (function) symbols.
pub struct Kallsyms {
    functions: HashSet<String>,
}

impl Kallsyms {
    /// Scan `/proc/kallsyms` for the functions in `wanted`.
    pub fn load<'a>(wanted: impl IntoIterator<Item = &'a str>) -> io::Result<Self> {
        Self::scan(BufReader::new(File::open("/proc/kallsyms")?), wanted)
    }

    fn scan<'a>(mut reader: impl io::BufRead, wanted: impl IntoIterator<Item = &'a str>) -> io::Result<Self> {
        let wanted: HashSet<&str> = wanted.into_iter().collect();
        let mut functions = HashSet::new();
        // One line buffer for the ~190,000 lines, not an allocation each.
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                break;
            }
            let mut fields = line.split_whitespace();
            let (Some(_address), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next()) else {
                continue;
            };
            if matches!(kind, "T" | "t" | "W" | "w") && wanted.contains(name) {
                functions.insert(name.to_owned());
            }
        }
        Ok(Self { functions })
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.functions.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(clippy::unwrap_used, reason = "tests fail loudly")]
    fn keeps_wanted_text_symbols_only() {
        let text = "ffffffff815f6430 T tlb_remove_table\nffffffff816b3ac0 t free_pte\nffffffff82000000 D some_data\nffffffffc0000000 t mod_fn\t[ext4]\nffffffff81000000 T not_wanted\n";
        let syms = Kallsyms::scan(text.as_bytes(), ["tlb_remove_table", "free_pte", "some_data", "mod_fn"]).unwrap();
        assert!(syms.has_function("tlb_remove_table"));
        assert!(syms.has_function("free_pte"));
        assert!(syms.has_function("mod_fn"));
        assert!(!syms.has_function("some_data"), "data, not a function");
        assert!(!syms.has_function("not_wanted"), "not asked for");
    }

    #[test]
    fn running_kernel_has_tlb_remove_table() {
        assert!(Kallsyms::load(["tlb_remove_table"]).expect("read /proc/kallsyms").has_function("tlb_remove_table"));
    }
}
