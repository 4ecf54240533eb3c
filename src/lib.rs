//! DeepRecall: recursive, multi-hop question answering over document collections, served over
//! gRPC. Data flows one way: `api` → `engine` → (`llm`, `store`, `cache`).

pub mod embed;
pub mod store;
pub mod text;
