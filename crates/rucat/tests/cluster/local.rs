//! The local platform with real Spark under several `rucat monitor` processes: fencing, hung
//! engines and deletes that need escalating.
