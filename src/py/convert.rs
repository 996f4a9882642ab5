//! Python objects to JSON bytes and back, directly: no `serde_json::Value` tree in between.

use std::fmt;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Serialize, SerializeMap, SerializeSeq, Serializer};

use crate::job::Payload;

/// Deeper nesting than this is refused; it also stops self-referencing containers, and stays
/// below `serde_json`'s own limit (128) for reading the data back.
const MAX_DEPTH: usize = 100;

struct PyJson<'a, 'py> {
    object: &'a Bound<'py, PyAny>,
    depth: usize,
}

impl PyJson<'_, '_> {
    fn child<'b, 'py>(&self, object: &'b Bound<'py, PyAny>) -> PyJson<'b, 'py> {
        PyJson {
            object,
            depth: self.depth + 1,
        }
    }
}

impl Serialize for PyJson<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let object = self.object;
        if self.depth > MAX_DEPTH {
            return Err(ser::Error::custom(format!(
                "data is nested deeper than {MAX_DEPTH} levels (a container that contains itself?)"
            )));
        }
        // Most common types first; exact checks are cheaper than subclass checks.
        if let Ok(text) = object.cast_exact::<PyString>() {
            let text = text.to_str().map_err(ser::Error::custom)?;
            return serializer.serialize_str(text);
        }
        if object.is_none() {
            return serializer.serialize_unit();
        }
        if let Ok(flag) = object.cast::<PyBool>() {
            return serializer.serialize_bool(flag.is_true());
        }
        if object.is_instance_of::<PyInt>() {
            if let Ok(value) = object.extract::<i64>() {
                return serializer.serialize_i64(value);
            }
            if let Ok(value) = object.extract::<u64>() {
                return serializer.serialize_u64(value);
            }
            return Err(ser::Error::custom(
                "integers must fit in 64 bits to be stored as JSON",
            ));
        }
        if let Ok(number) = object.cast::<PyFloat>() {
            let value = number.value();
            if !value.is_finite() {
                return Err(ser::Error::custom(format!(
                    "{value} is not valid JSON (only finite floats are)"
                )));
            }
            return serializer.serialize_f64(value);
        }
        if let Ok(dict) = object.cast::<PyDict>() {
            let mut map = serializer.serialize_map(Some(dict.len()))?;
            for (key, value) in dict.iter() {
                let key = key.cast::<PyString>().map_err(|_| {
                    ser::Error::custom(format!(
                        "dict keys must be str to be stored as JSON, got {}",
                        type_name(&key)
                    ))
                })?;
                map.serialize_entry(
                    key.to_str().map_err(ser::Error::custom)?,
                    &self.child(&value),
                )?;
            }
            return map.end();
        }
        if let Ok(list) = object.cast::<PyList>() {
            let mut seq = serializer.serialize_seq(Some(list.len()))?;
            for item in list.iter() {
                seq.serialize_element(&self.child(&item))?;
            }
            return seq.end();
        }
        if let Ok(tuple) = object.cast::<PyTuple>() {
            let mut seq = serializer.serialize_seq(Some(tuple.len()))?;
            for item in tuple.iter() {
                seq.serialize_element(&self.child(&item))?;
            }
            return seq.end();
        }
        if let Ok(text) = object.cast::<PyString>() {
            let text = text.to_str().map_err(ser::Error::custom)?;
            return serializer.serialize_str(text);
        }
        Err(ser::Error::custom(format!(
            "{} is not JSON-serialisable (use None, bool, int, float, str, list, tuple or dict)",
            type_name(object)
        )))
    }
}

fn type_name(object: &Bound<'_, PyAny>) -> String {
    object
        .get_type()
        .name()
        .map(|n| format!("an object of type {n}"))
        .unwrap_or_else(|_| "an object".into())
}

/// Serialises a Python value to JSON bytes; `Err` carries a message for `InvalidJobError`.
pub fn to_json(object: &Bound<'_, PyAny>) -> Result<Vec<u8>, String> {
    let mut buffer = Vec::with_capacity(64);
    serde_json::to_writer(&mut buffer, &PyJson { object, depth: 0 }).map_err(|e| e.to_string())?;
    Ok(buffer)
}

thread_local! {
    /// Reused for every payload: a push then allocates only the payload itself.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub fn to_payload(object: &Bound<'_, PyAny>) -> Result<Payload, String> {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buffer) => {
            buffer.clear();
            serde_json::to_writer(&mut *buffer, &PyJson { object, depth: 0 })
                .map_err(|e| e.to_string())?;
            let payload = Payload::from(&buffer[..]);
            // Keep a small buffer around, not the largest payload ever seen.
            if buffer.capacity() > 64 * 1024 {
                *buffer = Vec::new();
            }
            Ok(payload)
        }
        // Re-entered (a `__str__` of a dict key pushing a job, say): use a fresh buffer.
        Err(_) => to_json(object).map(Payload::from),
    })
}

/// Builds Python objects straight from JSON tokens.
struct PySeed<'py>(Python<'py>);

impl<'de, 'py> DeserializeSeed<'de> for PySeed<'py> {
    type Value = Bound<'py, PyAny>;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, 'py> Visitor<'de> for PySeed<'py> {
    type Value = Bound<'py, PyAny>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.0.None().into_bound(self.0))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(PyBool::new(self.0, v).to_owned().into_any())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        v.into_pyobject(self.0)
            .map(Bound::into_any)
            .map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        v.into_pyobject(self.0)
            .map(Bound::into_any)
            .map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(PyFloat::new(self.0, v).into_any())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(PyString::new(self.0, v).into_any())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let list = PyList::empty(self.0);
        while let Some(item) = seq.next_element_seed(PySeed(self.0))? {
            list.append(item).map_err(de::Error::custom)?;
        }
        Ok(list.into_any())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let dict = PyDict::new(self.0);
        while let Some(key) = map.next_key_seed(PySeed(self.0))? {
            let value = map.next_value_seed(PySeed(self.0))?;
            dict.set_item(key, value).map_err(de::Error::custom)?;
        }
        Ok(dict.into_any())
    }
}

pub fn from_json<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    PySeed(py)
        .deserialize(&mut deserializer)
        .map_err(|e| PyValueError::new_err(format!("stored job data is not valid JSON: {e}")))
}
