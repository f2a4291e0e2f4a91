//! A small owned Avro value, used for compiled field defaults and by the
//! pure-Rust tests (decode into `Value`, encode from `Value`). The Python
//! production path never builds these for message data.

/// An Avro value as seen by a *reader* (int/long collapse to `Long`,
/// float/double to `Double`, fixed to `Bytes`, like the Python mapping).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Boolean(bool),
    Long(i64),
    Double(f64),
    Bytes(Vec<u8>),
    String(String),
    /// Enum symbol.
    Enum(String),
    Array(Vec<Value>),
    /// Map entries in encounter order.
    Map(Vec<(String, Value)>),
    /// Record fields `(name, value)` in schema field order.
    Record(Vec<(String, Value)>),
}

impl Value {
    /// Convenience for tests: a record from `(name, value)` pairs.
    pub fn record<S: Into<String>>(fields: impl IntoIterator<Item = (S, Value)>) -> Value {
        Value::Record(fields.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn str(s: &str) -> Value {
        Value::String(s.to_owned())
    }

    /// Field of a record by name.
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Record(fs) => fs.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }
}
