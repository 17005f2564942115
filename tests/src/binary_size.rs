//! What a binary's bytes are: its ELF sections grouped into what they hold, so the bench can
//! say where a Lambda function's megabytes go (issue 15's breakdown for a function over its
//! size target) from the very bootstrap that ships, stripped as it is.

use std::collections::BTreeMap;

/// Bytes of the file by what they hold: `code` (.text and friends), `unwind` (the tables a
/// panic unwinds with: .eh_frame, its header, .gcc_except_table), `read_only_data` (.rodata:
/// strings, tables, embedded data such as the tokenizer's vocabulary), `relocated_read_only`
/// (.data.rel.ro: vtables and other pointer tables), `data` (.data, .got…), `symbols_and_debug`
/// (.symtab, .strtab, .debug_*: zero when stripped) and `other` (headers, dynamic linking,
/// padding between sections); together they are the file's size.
pub fn breakdown(bytes: &[u8]) -> Result<BTreeMap<&'static str, u64>, String> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(bytes).map_err(|e| format!("not an object file: {e}"))?;
    let mut out = BTreeMap::from([
        ("code", 0),
        ("unwind", 0),
        ("read_only_data", 0),
        ("relocated_read_only", 0),
        ("data", 0),
        ("symbols_and_debug", 0),
        ("other", 0),
    ]);
    let mut counted = 0u64;
    for section in file.sections() {
        // Sections that take no room in the file (.bss, .tbss) are memory, not package size.
        let Some((_, size)) = section.file_range() else {
            continue;
        };
        let name = section.name().unwrap_or("");
        *out.get_mut(group(name)).expect("every group is listed") += size;
        counted += size;
    }
    *out.get_mut("other").expect("listed") += (bytes.len() as u64).saturating_sub(counted);
    Ok(out)
}

fn group(section: &str) -> &'static str {
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| section.starts_with(p));
    if starts(&[".eh_frame", ".gcc_except_table"]) {
        "unwind"
    } else if starts(&[".text", ".init", ".fini", ".plt"]) {
        "code"
    } else if starts(&[".data.rel.ro"]) {
        "relocated_read_only"
    } else if starts(&[".rodata"]) {
        "read_only_data"
    } else if starts(&[".data", ".got", ".tdata", ".init_array", ".fini_array"]) {
        "data"
    } else if starts(&[".symtab", ".strtab", ".debug", ".zdebug"]) {
        "symbols_and_debug"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_groups_add_up_to_the_file_and_a_program_has_code() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let parts = breakdown(&exe).unwrap();
        assert_eq!(parts.values().sum::<u64>(), exe.len() as u64, "{parts:?}");
        assert!(parts["code"] > 100_000, "{parts:?}");
        assert!(parts["unwind"] > 0, "built with panic = unwind: {parts:?}");
    }

    #[test]
    fn what_is_not_an_object_file_is_an_error() {
        assert!(breakdown(b"#!/bin/sh\necho not elf\n").is_err());
    }

    #[test]
    fn sections_are_grouped_by_what_they_hold() {
        assert_eq!(group(".text.unlikely"), "code");
        assert_eq!(group(".eh_frame_hdr"), "unwind");
        assert_eq!(group(".data.rel.ro"), "relocated_read_only");
        assert_eq!(group(".rodata.str1.1"), "read_only_data");
        assert_eq!(group(".got.plt"), "data");
        assert_eq!(group(".debug_line"), "symbols_and_debug");
        assert_eq!(group(".dynsym"), "other");
    }
}
