//! gate's kernel test suite: the pieces that need no kernel (scenario files, probe contract,
//! log matching) are unit-tested on the host; [`suite`] holds the tests that run in guests.

pub mod driver;
pub mod env;
pub mod events;
pub mod outcome;
pub mod probe;
pub mod run;
pub mod scenario;
pub mod subst;
pub mod suite;
