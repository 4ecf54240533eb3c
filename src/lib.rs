//! DeepRecall: recursive, multi-hop question answering over document collections, served over
//! gRPC. Data flows one way: `api` → `engine` → (`llm`, `store`, `cache`).

pub mod access;
pub mod api;
pub mod cache;
pub mod cli;
pub mod config;
pub mod embed;
pub mod engine;
pub mod http;
pub mod lane;
pub mod llm;
#[cfg(feature = "local-models")]
pub mod local_model;
pub mod redis_link;
#[cfg(test)]
pub(crate) mod redis_test_server;
pub mod rerank;
pub mod secret;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod transport;
