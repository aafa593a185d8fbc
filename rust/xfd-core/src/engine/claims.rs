//! One writer per chunk: a chunk being written is claimed, so its region in the part file never has
//! two writers (one could overwrite the other's verified bytes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sink::FencedFile;

/// Chunk id -> the fence of the transfer writing it now.
#[derive(Default)]
pub(super) struct Claims(Mutex<HashMap<String, Arc<FencedFile>>>);

/// A chunk's claim: released when its fetch ends, however it ends (error, cancellation).
pub(super) struct Claim<'a> {
    claims: &'a Claims,
    chunk: String,
}

impl Claims {
    /// Makes the caller the writer of the chunk's region in `file`; `None` when another call already is.
    pub(super) fn claim(&self, chunk_id: &str, file: Arc<std::fs::File>) -> Option<(Claim<'_>, Arc<FencedFile>)> {
        let mut writing = self.0.lock().unwrap();
        if writing.contains_key(chunk_id) {
            return None;
        }
        let fence = Arc::new(FencedFile::new(file));
        writing.insert(chunk_id.to_owned(), fence.clone());
        let claim = Claim {
            claims: self,
            chunk: chunk_id.to_owned(),
        };
        Some((claim, fence))
    }

    /// The fence of the transfer writing `chunk_id` now, if any: closing it shuts that writer out.
    pub(super) fn fence_of(&self, chunk_id: &str) -> Option<Arc<FencedFile>> {
        self.0.lock().unwrap().get(chunk_id).cloned()
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.claims.0.lock().unwrap().remove(&self.chunk);
    }
}
