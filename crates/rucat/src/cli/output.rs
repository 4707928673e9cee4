//! How read commands print: `--output table` (aligned text columns) or `--output json`.

use std::io::Write;

/// `--output`: what a read command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned text columns, for people
    Table,
    /// JSON, for programs
    Json,
}

/// Rows of text under a header, printed in columns as wide as their widest cell (the last
/// column unpadded). Line breaks and tabs in cells print as `\n` and `\t` so that every row
/// stays on one line.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|cell| one_line(&cell.into()))
                .collect(),
        );
    }

    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (index, cell) in row.iter().enumerate().take(columns) {
                if index > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if index + 1 < columns {
                    let pad = widths[index].saturating_sub(cell.chars().count());
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

fn one_line(cell: &str) -> String {
    cell.replace('\r', "\\r")
        .replace('\n', "\\n")
        .replace('\t', "\\t")
}

/// Query results as a [`Table`]: the columns' names, then each row's values as Arrow displays
/// them (`NULL` for nulls).
#[cfg(feature = "spark")]
pub fn arrow_table(batch: &arrow::record_batch::RecordBatch) -> anyhow::Result<Table> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let schema = batch.schema();
    let mut table = Table::new(schema.fields().iter().map(|field| field.name().clone()));
    let options = FormatOptions::default().with_null("NULL");
    let formatters = batch
        .columns()
        .iter()
        .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    for row in 0..batch.num_rows() {
        table.row(
            formatters
                .iter()
                .map(|formatter| formatter.value(row).to_string()),
        );
    }
    Ok(table)
}

/// Query results as JSON: an array with an object per row, `null` for nulls.
#[cfg(feature = "spark")]
pub fn arrow_json(batch: &arrow::record_batch::RecordBatch) -> anyhow::Result<serde_json::Value> {
    use arrow::json::writer::{JsonArray, WriterBuilder};
    if batch.num_rows() == 0 {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, JsonArray>(Vec::new());
    writer.write_batches(&[batch])?;
    writer.finish()?;
    Ok(serde_json::from_slice(&writer.into_inner())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed(table: &Table) -> String {
        let mut out = Vec::new();
        table.write(&mut out).expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn columns_align_on_their_widest_cell() {
        let mut table = Table::new(["ID", "NAME", "END"]);
        table.row(["1", "a-long-name", "x"]);
        table.row(["22", "b", ""]);
        table.row(["3", "two\nlines", "y"]);
        assert_eq!(
            printed(&table),
            "ID  NAME         END\n1   a-long-name  x\n22  b\n3   two\\nlines   y\n"
        );
    }

    #[cfg(feature = "spark")]
    #[test]
    fn query_results_print_as_a_table_and_as_json() {
        use std::sync::Arc;

        use arrow::array::{Int32Array, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        use arrow::record_batch::RecordBatch;

        let schema = Schema::new(vec![
            Field::new("n", DataType::Int32, true),
            Field::new("word", DataType::Utf8, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int32Array::from(vec![Some(1), None, Some(300)])),
                Arc::new(StringArray::from(vec![Some("one"), Some("two"), None])),
            ],
        )
        .expect("a batch");
        assert_eq!(
            printed(&arrow_table(&batch).expect("a table")),
            "n     word\n1     one\nNULL  two\n300   NULL\n"
        );
        assert_eq!(
            arrow_json(&batch).expect("json"),
            serde_json::json!([
                {"n": 1, "word": "one"},
                {"n": null, "word": "two"},
                {"n": 300, "word": null}
            ])
        );
        assert_eq!(
            arrow_json(&batch.slice(0, 0)).expect("json"),
            serde_json::json!([])
        );
    }
}
