//! Loading and validating a store file (SPEC §3).
use std::path::Path;

pub(super) fn load(_path: &Path) -> crate::Result<super::ItemStore> {
    todo!("store loading")
}
