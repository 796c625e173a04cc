//! The checks of an attachment's declaration and of the list's parameters, each failure a
//! [`FieldError`] naming the field.

use tasklane_shared::config::AttachmentSettings;
use tasklane_shared::storage;
use uuid::Uuid;

use super::types::NewAttachment;
use crate::problem::FieldError;

/// Filenames longer than this (in characters) are refused.
const MAX_FILENAME_CHARS: usize = 255;

/// A declaration that passed: the cleaned name, the normalised type and the size.
pub struct Declared {
    pub filename: String,
    pub content_type: String,
    pub size: i64,
}

/// Checks a declaration against the limits; all the errors at once.
pub fn declaration(
    body: &NewAttachment,
    limits: &AttachmentSettings,
) -> Result<Declared, Vec<FieldError>> {
    let mut errors = Vec::new();
    let filename = clean_filename(&body.filename);
    if filename.is_empty() {
        errors.push(FieldError::new("filename", "required", "must name the file"));
    } else if filename.chars().count() > MAX_FILENAME_CHARS {
        errors.push(FieldError::new(
            "filename",
            "too_long",
            format!("must be at most {MAX_FILENAME_CHARS} characters"),
        ));
    }
    let content_type = storage::normalize_media_type(&body.content_type);
    if !limits.allowed_types.contains(&content_type) {
        errors.push(FieldError::new(
            "content_type",
            "type_not_allowed",
            format!(
                "{content_type:?} is not allowed; allowed: {}",
                limits.allowed_types.join(", ")
            ),
        ));
    }
    if body.size_bytes == 0 {
        errors.push(FieldError::new("size_bytes", "out_of_range", "must be at least 1"));
    } else if body.size_bytes > limits.max_bytes {
        errors.push(FieldError::new(
            "size_bytes",
            "too_large",
            format!("must be at most {} bytes", limits.max_bytes),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let size = i64::try_from(body.size_bytes).unwrap_or(i64::MAX);
    Ok(Declared { filename, content_type, size })
}

/// `limit` (1-100, default 20) and the id `cursor` continues after.
pub fn page(
    limit: Option<u32>,
    cursor: Option<&str>,
) -> Result<(u32, Option<Uuid>), Vec<FieldError>> {
    let limit = limit.unwrap_or(20);
    let mut errors = Vec::new();
    if !(1..=100).contains(&limit) {
        errors.push(FieldError::new("limit", "out_of_range", "must be between 1 and 100"));
    }
    let before = match cursor.map(crate::routes::id_cursor::decode) {
        None => None,
        Some(Some(before)) => Some(before),
        Some(None) => {
            errors.push(FieldError::new("cursor", "invalid", "is not a cursor from next_cursor"));
            None
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok((limit, before))
}

/// The name as given, without any folder part, control characters or surrounding space.
pub fn clean_filename(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    base.chars().filter(|c| !c.is_control()).collect::<String>().trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_folders_and_control_characters() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\Users\\me\\report.pdf"), "report.pdf");
        assert_eq!(clean_filename("  a\u{0}b\r\n.txt "), "ab.txt");
    }
}
