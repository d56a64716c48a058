//! Renders the service's JSON answers as tables for people.

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;

/// A list of objects becomes a table with one column per field; an object,
/// a two-column table of its fields; anything else, its JSON text.
pub fn render(value: &Value) -> String {
    match value {
        Value::Array(items) if items.is_empty() => "(none)".to_string(),
        Value::Array(items) if items.iter().all(Value::is_object) => {
            let mut columns: Vec<String> = Vec::new();
            for item in items {
                for key in item.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !columns.contains(key) {
                        columns.push(key.clone());
                    }
                }
            }
            let mut table = new_table();
            table.set_header(columns.clone());
            for item in items {
                table.add_row(
                    columns
                        .iter()
                        .map(|c| cell(item.get(c).unwrap_or(&Value::Null))),
                );
            }
            table.to_string()
        }
        Value::Object(fields) => {
            let mut table = new_table();
            for (name, value) in fields {
                table.add_row(vec![name.clone(), cell(value)]);
            }
            table.to_string()
        }
        other => cell(other),
    }
}

fn new_table() -> Table {
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    table
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            items.iter().map(cell).collect::<Vec<_>>().join(", ")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_become_tables_with_a_column_per_field() {
        let text = render(
            &json!([{"id": "node1", "status": "up"}, {"id": "node2", "status": "down", "keys": 3}]),
        );
        assert!(text.contains("id") && text.contains("status") && text.contains("keys"));
        assert!(text.contains("node2") && text.contains("down"));
        assert_eq!(render(&json!([])), "(none)");
        let object = render(&json!({"key": "s:1", "nodes": ["node1", "node2"]}));
        assert!(object.contains("node1, node2"));
    }
}
