//! Hot swap: a service keeps one [`SharedEngine`] and replaces the model while requests are in
//! flight. Each request takes a snapshot (`Arc<Engine>`) and uses it from start to finish, so it
//! sees the old model or the new one, never a mix; the old engine (and its mapped files) is freed
//! when the last request holding it finishes.

use std::sync::{Arc, RwLock};

use crate::engine::Engine;

/// An engine that can be replaced while shared by many threads.
#[derive(Debug)]
pub struct SharedEngine {
    current: RwLock<Arc<Engine>>,
}

impl SharedEngine {
    pub fn new(engine: Engine) -> Self {
        SharedEngine {
            current: RwLock::new(Arc::new(engine)),
        }
    }

    /// The engine to use for one whole request. Cheap: one read lock held for an `Arc` clone.
    pub fn snapshot(&self) -> Arc<Engine> {
        // A poisoned lock only means a writer panicked between two plain assignments; the Arc
        // inside is always a complete engine, so keep serving it.
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Installs `engine` for all later snapshots and returns the previous one. Requests already
    /// holding a snapshot finish on the engine they started with.
    pub fn swap(&self, engine: Engine) -> Arc<Engine> {
        let new = Arc::new(engine);
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        std::mem::replace(&mut *guard, new)
    }
}
