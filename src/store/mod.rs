//! Item stores (SPEC §3): the token store (behavior tokens) and the candidate store (item-tower
//! outputs). `vectors` `[N, D]` (F32, F16, BF16, or I8 with its `scales` `[N]`) stays in the
//! memory-mapped file; `ids` (optional, U64 or I64) is turned into a hash index for O(1) expected
//! lookup. Without `ids`, the id is the row number. [`quantize`] writes an I8 store from any store
//! (`hcn quantize`).

mod load;
#[cfg_attr(not(feature = "cuda"), allow(unused_imports))]
pub(crate) use load::check_row_scale;
pub mod quantize;

use std::path::{Path, PathBuf};

use crate::tensor::MappedMatrix;

/// Maps an external item id to its row.
#[derive(Debug, Clone)]
pub enum IdIndex {
    /// No `ids` tensor: id `i` is row `i` for `i < N`.
    RowNumber,
    /// `ids` tensor present (unique ids).
    Map(std::collections::HashMap<u64, u32, BuildIdHasher>),
}

/// A fast, non-cryptographic hasher for u64 ids (ids are not attacker-chosen keys of our maps;
/// they come from the store file the operator loaded).
pub type BuildIdHasher = std::hash::BuildHasherDefault<IdHasher>;

/// splitmix64 finaliser over the one u64 written.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }
}

/// A loaded item store. `Send + Sync`; cheap to clone.
#[derive(Debug, Clone)]
pub struct ItemStore {
    pub vectors: MappedMatrix,
    pub index: IdIndex,
    pub path: PathBuf,
}

impl ItemStore {
    /// Memory-maps and validates a SPEC §3 store file.
    ///
    /// The file must not be modified or truncated while the store (or a clone) is alive: vectors
    /// are read from the mapping. Replace a store by writing a new file and renaming it over the old.
    pub fn load(path: impl AsRef<Path>) -> crate::Result<Self> {
        load::load(path.as_ref())
    }

    /// This store with its vectors in anonymous memory advised for huge pages
    /// ([`MappedMatrix::to_anonymous`]); `EngineOptions::huge_pages`.
    pub fn in_huge_pages(&self) -> crate::Result<ItemStore> {
        let vectors = self.vectors.to_anonymous(true).map_err(|e| {
            crate::Error::Device(format!(
                "cannot copy {} into huge pages: {e}",
                self.path.display()
            ))
        })?;
        Ok(ItemStore {
            vectors,
            index: self.index.clone(),
            path: self.path.clone(),
        })
    }

    /// `N`.
    pub fn len(&self) -> usize {
        self.vectors.rows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `D`.
    pub fn dim(&self) -> usize {
        self.vectors.cols()
    }

    /// The row of item `id`, if the store has it.
    #[inline]
    pub fn lookup(&self, id: u64) -> Option<u32> {
        match &self.index {
            IdIndex::RowNumber => (id < self.len() as u64).then_some(id as u32),
            IdIndex::Map(m) => m.get(&id).copied(),
        }
    }

    /// Item id of every row (the `ids` tensor, or the row number when it has none).
    pub fn row_ids(&self) -> Vec<u64> {
        match &self.index {
            IdIndex::RowNumber => (0..self.len() as u64).collect(),
            IdIndex::Map(map) => {
                let mut ids = vec![0u64; self.len()];
                for (&id, &row) in map {
                    // The loader built the map from the `ids` tensor, one entry per row.
                    if let Some(slot) = ids.get_mut(row as usize) {
                        *slot = id;
                    }
                }
                ids
            }
        }
    }

    /// True when the store has an `ids` tensor (otherwise ids are row numbers).
    pub fn has_ids(&self) -> bool {
        matches!(self.index, IdIndex::Map(_))
    }
}
