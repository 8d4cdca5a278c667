//! GGUF metadata: an ordered map of unique keys to typed values, with getters that turn a missing
//! key or a wrong type into an error naming the key and the type expected.

use std::collections::HashMap;

use super::error::GgufError;
use super::value::{Array, Value};

/// Key → value, in file (or insertion) order; keys are unique.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append `key`; a key already present is refused.
    pub fn insert(&mut self, key: impl Into<String>, v: Value) -> Result<(), GgufError> {
        let key = key.into();
        if self.index.contains_key(&key) {
            return Err(GgufError::DuplicateKey { key });
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, v));
        Ok(())
    }

    /// Set `key`, replacing its value in place when present; returns the old value.
    pub fn set(&mut self, key: impl Into<String>, v: Value) -> Option<Value> {
        let key = key.into();
        match self.index.get(&key).and_then(|&i| self.entries.get_mut(i)) {
            Some(entry) => Some(std::mem::replace(&mut entry.1, v)),
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, v));
                None
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index
            .get(key)
            .and_then(|&i| self.entries.get(i))
            .map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Any non-negative integer.
    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        self.required(key, EXPECT_U64, Value::as_u64)
    }

    /// Any non-negative integer that fits in a u32.
    pub fn u32(&self, key: &str) -> Result<u32, GgufError> {
        self.required(key, EXPECT_U32, as_u32)
    }

    /// F32 or F64.
    pub fn f32(&self, key: &str) -> Result<f32, GgufError> {
        self.required(key, EXPECT_F32, Value::as_f32)
    }

    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        self.required(key, EXPECT_STR, Value::as_str)
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<&[String], GgufError> {
        self.required(key, EXPECT_STRINGS, |v| match v.as_array() {
            Some(Array::String(items)) => Some(items.as_slice()),
            _ => None,
        })
    }

    /// An array of I32.
    pub fn i32s(&self, key: &str) -> Result<&[i32], GgufError> {
        self.required(key, EXPECT_I32S, |v| match v.as_array() {
            Some(Array::I32(items)) => Some(items.as_slice()),
            _ => None,
        })
    }

    /// An array of F32.
    pub fn f32s(&self, key: &str) -> Result<&[f32], GgufError> {
        self.required(key, EXPECT_F32S, |v| match v.as_array() {
            Some(Array::F32(items)) => Some(items.as_slice()),
            _ => None,
        })
    }

    /// Absent => None; present with a type other than a non-negative integer => error.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.optional(key, EXPECT_U64, Value::as_u64)
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.optional(key, EXPECT_F32, Value::as_f32)
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.optional(key, EXPECT_BOOL, Value::as_bool)
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.optional(key, EXPECT_STR, Value::as_str)
    }

    fn required<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        read: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<T, GgufError> {
        self.optional(key, expected, read)?
            .ok_or_else(|| GgufError::MissingKey {
                key: key.to_string(),
                expected,
            })
    }

    fn optional<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        read: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match read(v) {
            Some(t) => Ok(Some(t)),
            None => Err(GgufError::WrongType {
                key: key.to_string(),
                expected,
                found: found(v),
            }),
        }
    }
}

const EXPECT_U64: &str = "a non-negative integer";
const EXPECT_U32: &str = "a non-negative integer that fits in 32 bits";
const EXPECT_F32: &str = "F32 or F64";
const EXPECT_STR: &str = "STRING";
const EXPECT_BOOL: &str = "BOOL";
const EXPECT_STRINGS: &str = "an array of STRING";
const EXPECT_I32S: &str = "an array of I32";
const EXPECT_F32S: &str = "an array of f32";

fn as_u32(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// What a wrong value is, for error messages: its type and a short preview.
fn found(v: &Value) -> String {
    match v {
        Value::Array(a) => a.preview(),
        other => format!("{} {}", other.type_name(), other.preview()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metadata {
        let mut m = Metadata::new();
        m.insert("n", Value::I32(7)).unwrap();
        m.insert("neg", Value::I32(-1)).unwrap();
        m.insert("big", Value::U64(1 << 40)).unwrap();
        m.insert("eps", Value::F64(1e-6)).unwrap();
        m.insert("name", Value::String("qwen2".into())).unwrap();
        m.insert("toks", Value::Array(Array::String(vec!["a".into()])))
            .unwrap();
        m.insert("types", Value::Array(Array::I32(vec![1, 3])))
            .unwrap();
        m
    }

    #[test]
    fn typed_getters_read_matching_values() {
        let m = sample();
        assert_eq!(m.u64("n").unwrap(), 7);
        assert_eq!(m.u32("n").unwrap(), 7);
        assert_eq!(m.u64("big").unwrap(), 1 << 40);
        assert!((m.f32("eps").unwrap() - 1e-6).abs() < 1e-12);
        assert_eq!(m.str("name").unwrap(), "qwen2");
        assert_eq!(m.strings("toks").unwrap(), ["a".to_string()]);
        assert_eq!(m.i32s("types").unwrap(), [1, 3]);
        assert_eq!(m.opt_u64("absent").unwrap(), None);
        assert_eq!(m.opt_str("name").unwrap(), Some("qwen2"));
        assert_eq!(m.opt_bool("absent").unwrap(), None);
    }

    #[test]
    fn typed_getters_name_the_key_on_failure() {
        let m = sample();
        let err = m.u64("absent").unwrap_err();
        assert!(matches!(&err, GgufError::MissingKey { key, .. } if key == "absent"));
        let err = m.u64("neg").unwrap_err();
        assert!(matches!(&err, GgufError::WrongType { key, .. } if key == "neg"));
        assert!(err.to_string().contains("'neg'"), "{err}");
        assert!(matches!(m.u32("big"), Err(GgufError::WrongType { .. })));
        assert!(matches!(
            m.opt_f32("name"),
            Err(GgufError::WrongType { .. })
        ));
        assert!(matches!(
            m.strings("types"),
            Err(GgufError::WrongType { .. })
        ));
    }

    #[test]
    fn insert_refuses_duplicates_and_set_replaces_in_place() {
        let mut m = sample();
        assert!(
            matches!(m.insert("n", Value::U8(1)), Err(GgufError::DuplicateKey { key }) if key == "n")
        );
        assert_eq!(m.set("n", Value::U8(1)), Some(Value::I32(7)));
        assert_eq!(
            m.iter().next().map(|(k, v)| (k, v.clone())),
            Some(("n", Value::U8(1)))
        );
        assert_eq!(m.len(), 7);
    }
}
