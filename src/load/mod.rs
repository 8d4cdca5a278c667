//! The load path: a plan of units (`embed`, `layer.0` … `layer.{n-1}`, `head`), the residency
//! gate the engine waits on, the progress the HTTP API reports, the loader thread that streams
//! units in plan order, and the memory check before it.

pub mod loader;
pub mod memory;
pub mod plan;
pub mod progress;
pub mod residency;
