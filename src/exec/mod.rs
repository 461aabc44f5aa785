//! Executors of the plan in SPEC §1: the fast CPU path lives here; [`crate::reference`] stays the
//! oracle it is tested against.

pub(crate) mod user;
