//! Tracepoint record layouts from tracefs `format` files.
//!
//! Syscall tracepoint records are a stable ABI, other subsystems' are not
//! (io_uring's gained and moved fields across versions): their field
//! offsets are read at start-up and handed to the programs.

use std::{fs, path::Path};

/// Byte offset of `field` in the record of tracepoint `category:event`,
/// from `<tracefs>/events/<category>/<event>/format` (`None` when the event
/// or the field does not exist).
pub fn field_offset(tracefs: &Path, category: &str, event: &str, field: &str) -> Option<u64> {
    let format = fs::read_to_string(tracefs.join("events").join(category).join(event).join("format")).ok()?;
    parse_field_offset(&format, field)
}

/// The offset of `field` in a `format` text.
fn parse_field_offset(format: &str, field: &str) -> Option<u64> {
    // `	field:void * req;	offset:16;	size:8;	signed:0;`
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';');
        let declaration = parts.next()?.strip_prefix("field:")?;
        let name = declaration.rsplit([' ', '*']).next()?;
        if name != field {
            return None;
        }
        parts.find_map(|part| part.trim().strip_prefix("offset:")).and_then(|o| o.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBMIT_REQ: &str = "name: io_uring_submit_req
ID: 2140
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:void * ctx;	offset:8;	size:8;	signed:0;
	field:void * req;	offset:16;	size:8;	signed:0;
	field:unsigned long long user_data;	offset:24;	size:8;	signed:0;
	field:u8 opcode;	offset:32;	size:1;	signed:0;
";

    #[test]
    fn finds_fields_by_name() {
        assert_eq!(parse_field_offset(SUBMIT_REQ, "req"), Some(16));
        assert_eq!(parse_field_offset(SUBMIT_REQ, "opcode"), Some(32));
        assert_eq!(parse_field_offset(SUBMIT_REQ, "ctx"), Some(8));
        assert_eq!(parse_field_offset(SUBMIT_REQ, "data"), None, "not a suffix match of user_data");
        assert_eq!(parse_field_offset(SUBMIT_REQ, "missing"), None);
    }
}
