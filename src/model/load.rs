//! Loading and validating a model file (SPEC §2).
use std::path::Path;

pub(super) fn load(_path: &Path) -> crate::Result<super::Model> {
    todo!("model loading")
}
