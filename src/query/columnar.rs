//! The query over archive segments (Parquet), column by column: only the columns the query
//! reads are decoded, and row groups whose time range lies outside `--from`/`--to` are skipped
//! on their statistics without being read. Each row is compared through the same
//! [`super::lang`] code as a decoded event, so a query means the same over the archive and
//! over log files.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, TimestampNanosecondType};
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow_buffer::BooleanBuffer;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowPredicateFn, ParquetRecordBatchReaderBuilder, RowFilter};
use parquet::file::statistics::Statistics;

use super::lang::{Expr, Field};
use super::{Acc, Aggregate, Query, QueryReport};
use crate::event::EventTime;
use crate::event::field::FieldValue;

/// Why a query cannot run over the archive.
#[derive(Debug, thiserror::Error)]
#[error(
    "{field}: not an archive column (the archive keeps {columns}; requestObject, responseObject and annotations as raw JSON: query them with DuckDB's json functions, or query the log files)"
)]
pub struct NotAColumn {
    pub field: String,
    pub columns: String,
}

/// The archive column a query field reads, by its rule path.
fn column_of(field: &Field) -> Result<String, NotAColumn> {
    let path = field.path.as_str();
    let schema = crate::archive::schema();
    if path != "time" && schema.field_with_name(path).is_ok() {
        return Ok(path.to_owned());
    }
    Err(NotAColumn {
        field: field.written.clone(),
        columns: schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .filter(|n| {
                !matches!(
                    *n,
                    "time" | "annotations" | "requestObject" | "responseObject" | "source"
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Checks that every field of `query` is an archive column.
pub fn check(query: &Query) -> Result<(), NotAColumn> {
    for f in query.filter.fields().into_iter().chain(&query.group_by) {
        column_of(f)?;
    }
    if let Aggregate::Distinct(f) = &query.aggregate {
        column_of(f)?;
    }
    Ok(())
}

/// A column of one batch, typed.
enum Col<'a> {
    Str(&'a arrow_array::StringArray),
    /// A dictionary-encoded string column, read as its keys and its dictionary.
    Dict(
        &'a arrow_array::DictionaryArray<Int32Type>,
        &'a arrow_array::StringArray,
    ),
    Int(&'a arrow_array::Int32Array),
    List(&'a arrow_array::ListArray),
}

impl<'a> Col<'a> {
    fn of(array: &'a ArrayRef) -> Option<Col<'a>> {
        match array.data_type() {
            arrow_schema::DataType::Utf8 => Some(Col::Str(array.as_string::<i32>())),
            arrow_schema::DataType::Dictionary(key, value)
                if **key == arrow_schema::DataType::Int32
                    && **value == arrow_schema::DataType::Utf8 =>
            {
                let dict = array.as_dictionary::<Int32Type>();
                Some(Col::Dict(dict, dict.values().as_string::<i32>()))
            }
            arrow_schema::DataType::Int32 => Some(Col::Int(array.as_primitive::<Int32Type>())),
            arrow_schema::DataType::List(_) => Some(Col::List(array.as_list::<i32>())),
            _ => None,
        }
    }

    /// Row `i` as the value a decoded event's field resolves to.
    fn value(&self, i: usize) -> FieldValue<'a> {
        match self {
            Col::Str(a) if a.is_valid(i) => FieldValue::Str(a.value(i).into()),
            Col::Dict(d, values) if d.is_valid(i) => {
                FieldValue::Str(values.value(d.keys().value(i) as usize).into())
            }
            Col::Int(a) if a.is_valid(i) => FieldValue::Int(i64::from(a.value(i))),
            Col::List(a) if a.is_valid(i) => {
                let items = a.value(i);
                let items = items.as_string::<i32>();
                FieldValue::List(
                    (0..items.len())
                        .filter(|&j| items.is_valid(j))
                        .map(|j| items.value(j).to_owned().into())
                        .collect(),
                )
            }
            _ => FieldValue::Missing,
        }
    }

    /// Row `i` appended to a group key, as [`FieldValue::to_key_string`] writes it.
    fn write_key(&self, i: usize, out: &mut String) {
        match self {
            Col::Str(a) if a.is_valid(i) => out.push_str(a.value(i)),
            Col::Dict(d, values) if d.is_valid(i) => {
                out.push_str(values.value(d.keys().value(i) as usize))
            }
            Col::Int(a) if a.is_valid(i) => {
                let _ = write!(out, "{}", a.value(i));
            }
            Col::List(_) => out.push_str(&self.value(i).to_key_string()),
            _ => {}
        }
    }
}

/// The filter with its fields bound to the batch's columns.
enum Bound<'a> {
    All,
    /// An integer column against a number: no per-row value built.
    IntCompare(&'a arrow_array::Int32Array, super::lang::Op, f64, bool),
    /// `=`/`!=` on a string column (`true`: `!=`).
    StrMatch(&'a arrow_array::StringArray, bool, &'a super::lang::Value),
    /// A comparison or `in` on a dictionary column, answered once per dictionary value: the
    /// keys, the answer per value, and the answer for a missing (null) value.
    DictTable(&'a arrow_array::Int32Array, Vec<bool>, bool),
    Compare(Col<'a>, super::lang::Op, &'a super::lang::Value),
    In(Col<'a>, &'a [super::lang::Value]),
    Not(Box<Bound<'a>>),
    And(Box<Bound<'a>>, Box<Bound<'a>>),
    Or(Box<Bound<'a>>, Box<Bound<'a>>),
}

fn bind<'a>(expr: &'a Expr, batch: &'a RecordBatch) -> Option<Bound<'a>> {
    let col = |f: &Field| -> Option<Col<'a>> {
        let name = column_of(f).ok()?;
        Col::of(batch.column_by_name(&name)?)
    };
    use super::lang::Op;
    Some(match expr {
        Expr::All => Bound::All,
        Expr::Compare(f, op, v) => match (col(f)?, op, v.number()) {
            // A missing value is "" to `=` and `!=`, and compares false otherwise.
            (Col::Int(a), op, Some(n)) => Bound::IntCompare(a, *op, n, *op == Op::Ne),
            (Col::Str(a), Op::Eq | Op::Ne, _) => Bound::StrMatch(a, *op == Op::Ne, v),
            (Col::Dict(d, values), op, _) => {
                let table = (0..values.len())
                    .map(|k| {
                        values.is_valid(k)
                            && super::lang::compare(
                                &FieldValue::Str(values.value(k).into()),
                                *op,
                                v,
                            )
                    })
                    .collect();
                let missing = super::lang::compare(&FieldValue::Missing, *op, v);
                Bound::DictTable(d.keys(), table, missing)
            }
            (c, op, _) => Bound::Compare(c, *op, v),
        },
        Expr::In(f, values) => match col(f)? {
            Col::Dict(d, dict) => {
                let table = (0..dict.len())
                    .map(|k| {
                        dict.is_valid(k) && {
                            let got = FieldValue::Str(dict.value(k).into());
                            values.iter().any(|v| super::lang::compare(&got, Op::Eq, v))
                        }
                    })
                    .collect();
                let missing = values
                    .iter()
                    .any(|v| super::lang::compare(&FieldValue::Missing, Op::Eq, v));
                Bound::DictTable(d.keys(), table, missing)
            }
            c => Bound::In(c, values),
        },
        Expr::Not(e) => Bound::Not(Box::new(bind(e, batch)?)),
        Expr::And(a, b) => Bound::And(Box::new(bind(a, batch)?), Box::new(bind(b, batch)?)),
        Expr::Or(a, b) => Bound::Or(Box::new(bind(a, batch)?), Box::new(bind(b, batch)?)),
    })
}

impl Bound<'_> {
    /// The rows of a batch of `n` that pass, as a bitmap. An integer comparison runs over the
    /// column's values slice in one tight loop (nulls patched in after); everything else row
    /// by row.
    fn select(&self, n: usize) -> BooleanBuffer {
        use super::lang::Op;
        if let Bound::DictTable(keys, table, missing) = self {
            let k = keys.values();
            // A null row's key slot may hold anything: `get`, and nulls patched in below.
            let picked = BooleanBuffer::collect_bool(n, |i| {
                table.get(k[i] as usize).copied().unwrap_or(false)
            });
            return match keys.nulls() {
                None => picked,
                Some(valid) if *missing => &(&picked & valid.inner()) | &!valid.inner(),
                Some(valid) => &picked & valid.inner(),
            };
        }
        let Bound::IntCompare(a, op, x, missing) = self else {
            return BooleanBuffer::collect_bool(n, |i| self.matches(i));
        };
        let values = a.values();
        let x = *x;
        let picked = match op {
            Op::Eq => BooleanBuffer::collect_bool(n, |i| f64::from(values[i]) == x),
            Op::Ne => BooleanBuffer::collect_bool(n, |i| f64::from(values[i]) != x),
            Op::Lt => BooleanBuffer::collect_bool(n, |i| f64::from(values[i]) < x),
            Op::Le => BooleanBuffer::collect_bool(n, |i| f64::from(values[i]) <= x),
            Op::Gt => BooleanBuffer::collect_bool(n, |i| f64::from(values[i]) > x),
            Op::Ge => BooleanBuffer::collect_bool(n, |i| f64::from(values[i]) >= x),
        };
        match a.nulls() {
            None => picked,
            // A null row's answer is `missing`, whatever its slot in the values holds.
            Some(valid) if *missing => &(&picked & valid.inner()) | &!valid.inner(),
            Some(valid) => &picked & valid.inner(),
        }
    }

    fn matches(&self, i: usize) -> bool {
        match self {
            Bound::All => true,
            Bound::IntCompare(a, op, n, missing) => {
                if a.is_null(i) {
                    return *missing;
                }
                let x = f64::from(a.value(i));
                match op {
                    super::lang::Op::Eq => x == *n,
                    super::lang::Op::Ne => x != *n,
                    super::lang::Op::Lt => x < *n,
                    super::lang::Op::Le => x <= *n,
                    super::lang::Op::Gt => x > *n,
                    super::lang::Op::Ge => x >= *n,
                }
            }
            Bound::DictTable(keys, table, missing) => {
                if keys.is_null(i) {
                    *missing
                } else {
                    table.get(keys.value(i) as usize).copied().unwrap_or(false)
                }
            }
            Bound::StrMatch(a, negate, v) => {
                let hit = if a.is_null(i) {
                    v.text.is_empty()
                } else {
                    v.matches_text(a.value(i))
                };
                hit != *negate
            }
            Bound::Compare(c, op, v) => super::lang::compare(&c.value(i), *op, v),
            Bound::In(c, values) => {
                let got = c.value(i);
                values
                    .iter()
                    .any(|v| super::lang::compare(&got, super::lang::Op::Eq, v))
            }
            Bound::Not(e) => !e.matches(i),
            Bound::And(a, b) => a.matches(i) && b.matches(i),
            Bound::Or(a, b) => a.matches(i) || b.matches(i),
        }
    }
}

/// Groups keyed by one string (the bucket and the group's values, separated), so that a
/// matched row is looked up without allocating.
#[derive(Default)]
pub(super) struct Groups {
    map: HashMap<String, (Option<EventTime>, Acc)>,
    key: String,
}

const SEP: char = '\u{1f}';

impl Groups {
    pub(super) fn into_rows(self, width: usize) -> HashMap<(Option<EventTime>, Vec<String>), Acc> {
        self.map
            .into_iter()
            .map(|(key, (bucket, acc))| {
                let values = key.split_once(SEP).map_or("", |(_, v)| v);
                let group: Vec<String> = if width == 0 {
                    Vec::new()
                } else {
                    values.split(SEP).map(str::to_owned).collect()
                };
                ((bucket, group), acc)
            })
            .collect()
    }
}

/// A segment's time range from its row groups' statistics: which row groups to read.
fn row_groups_in_range(
    meta: &parquet::file::metadata::ParquetMetaData,
    time_column: usize,
    query: &Query,
) -> Vec<usize> {
    (0..meta.num_row_groups())
        .filter(|&rg| {
            let Some(Statistics::Int64(stats)) =
                meta.row_group(rg).column(time_column).statistics()
            else {
                return true;
            };
            let (Some(&min), Some(&max)) = (stats.min_opt(), stats.max_opt()) else {
                return true;
            };
            query.from.is_none_or(|from| max >= from.0) && query.to.is_none_or(|to| min < to.0)
        })
        .collect()
}

/// The filter's top-level `and` terms, each a predicate of its own: the reader evaluates
/// them in turn and decodes a term's columns only for the rows the terms before it kept.
fn conjuncts(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::And(a, b) => {
            let mut all = conjuncts(a);
            all.extend(conjuncts(b));
            all
        }
        Expr::All => Vec::new(),
        other => vec![other],
    }
}

/// How costly a term is to decode and compare: numbers first, then strings, lists last.
fn cost(expr: &Expr, schema: &arrow_schema::Schema) -> u32 {
    expr.fields()
        .iter()
        .map(|f| {
            let ty = column_of(f).ok().and_then(|n| {
                schema
                    .field_with_name(&n)
                    .ok()
                    .map(|f| f.data_type().clone())
            });
            match ty {
                Some(arrow_schema::DataType::Int32) => 1,
                Some(arrow_schema::DataType::Utf8) => 4,
                _ => 16,
            }
        })
        .sum()
}

/// The leaf columns (Parquet's numbering) of the named top-level columns.
fn mask_of(
    parquet_schema: &parquet::schema::types::SchemaDescriptor,
    schema: &arrow_schema::Schema,
    names: &[String],
) -> Result<ProjectionMask, String> {
    let mut roots = Vec::new();
    for name in names {
        let index = schema
            .index_of(name)
            .map_err(|_| format!("no column {name:?}: not an auditwatch archive segment"))?;
        roots.push(index);
    }
    Ok(ProjectionMask::roots(parquet_schema, roots))
}

/// The time range and the filter's and-terms as Parquet row-filter predicates, cheapest
/// first (see [`conjuncts`]).
fn predicates(
    query: &Query,
    parquet_schema: &parquet::schema::types::SchemaDescriptor,
    schema: &arrow_schema::Schema,
) -> Result<Vec<Box<dyn parquet::arrow::arrow_reader::ArrowPredicate>>, String> {
    let mut predicates: Vec<Box<dyn parquet::arrow::arrow_reader::ArrowPredicate>> = Vec::new();
    if query.from.is_some() || query.to.is_some() {
        let (from, to) = (query.from, query.to);
        let mask = mask_of(parquet_schema, schema, &["time".to_owned()])?;
        predicates.push(Box::new(ArrowPredicateFn::new(
            mask,
            move |batch: RecordBatch| {
                let time = batch
                    .column(0)
                    .as_primitive_opt::<TimestampNanosecondType>()
                    .ok_or_else(|| {
                        arrow_schema::ArrowError::SchemaError("time is not a timestamp".into())
                    })?;
                Ok(BooleanArray::new(
                    BooleanBuffer::collect_bool(batch.num_rows(), |i| {
                        let t = time.is_valid(i).then(|| time.value(i));
                        from.is_none_or(|f| t.is_some_and(|t| t >= f.0))
                            && to.is_none_or(|to| t.is_some_and(|t| t < to.0))
                    }),
                    None,
                ))
            },
        )));
    }
    let mut terms = conjuncts(&query.filter);
    terms.sort_by_key(|t| cost(t, schema));
    for term in terms {
        let mut names = Vec::new();
        for f in term.fields() {
            let name = column_of(f).map_err(|e| e.to_string())?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let mask = mask_of(parquet_schema, schema, &names)?;
        let term = term.clone();
        predicates.push(Box::new(ArrowPredicateFn::new(
            mask,
            move |batch: RecordBatch| {
                let bound = bind(&term, &batch).ok_or_else(|| {
                    arrow_schema::ArrowError::SchemaError("a column of an unexpected type".into())
                })?;
                Ok(BooleanArray::new(bound.select(batch.num_rows()), None))
            },
        )));
    }
    Ok(predicates)
}

/// The archive's schema with its dictionary-encoded string columns read as Arrow
/// dictionaries: a string comparison is then answered once per distinct value, not per row.
fn dictionary_schema() -> arrow_schema::SchemaRef {
    let schema = crate::archive::schema();
    let fields: Vec<arrow_schema::Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if *f.data_type() == arrow_schema::DataType::Utf8
                && !crate::archive::UNIQUE_COLUMNS.contains(&f.name().as_str())
            {
                f.as_ref()
                    .clone()
                    .with_data_type(arrow_schema::DataType::Dictionary(
                        Box::new(arrow_schema::DataType::Int32),
                        Box::new(arrow_schema::DataType::Utf8),
                    ))
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    Arc::new(arrow_schema::Schema::new(fields))
}

/// Opens a segment for `query`: the row groups its time range needs, its filter as row
/// filters. Also the segment's number of rows.
fn open_segment(
    query: &Query,
    path: &Path,
    row_filter: bool,
) -> Result<(ParquetRecordBatchReaderBuilder<File>, u64), String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let options =
        parquet::arrow::arrow_reader::ArrowReaderOptions::new().with_schema(dictionary_schema());
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)
        .map_err(|e| format!("not a readable Parquet segment: {e}"))?;
    let schema = builder.schema().clone();
    let parquet_schema = builder.parquet_schema();
    let time_leaf = (0..parquet_schema.num_columns())
        .find(|&i| parquet_schema.column(i).path().string() == "time")
        .ok_or("no time column: not an auditwatch archive segment")?;
    let row_groups = row_groups_in_range(builder.metadata(), time_leaf, query);
    let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let predicates = if row_filter {
        Some(predicates(query, parquet_schema, &schema)?)
    } else {
        None
    };
    let builder = builder.with_row_groups(row_groups);
    Ok(match predicates {
        Some(p) => (builder.with_row_filter(RowFilter::new(p)), rows),
        None => (builder, rows),
    })
}

/// Runs `query` over one Parquet segment, adding to `groups` and `report`.
pub(super) fn run_segment(
    query: &Query,
    path: &Path,
    groups: &mut Groups,
    report: &mut QueryReport,
) -> Result<(), String> {
    // No row filter: the filter's columns are decoded whole (the repetitive strings as
    // dictionary keys, which is cheap) and each term selects over a whole batch at once; a
    // chain of row filters decoded fewer values but paid for every gap in the selection.
    let (builder, rows) = open_segment(query, path, false)?;
    // Every event of the segment was considered: read, or ruled out by its row group's
    // time range.
    report.events += rows;
    let schema = builder.schema().clone();
    let parquet_schema = builder.parquet_schema();
    // The time only when the result or the range needs it.
    let mut names: Vec<String> = Vec::new();
    if needs_time(query) || query.from.is_some() || query.to.is_some() {
        names.push("time".into());
    }
    for f in query.filter.fields().into_iter().chain(&query.group_by) {
        let name = column_of(f).map_err(|e| e.to_string())?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if let Aggregate::Distinct(f) = &query.aggregate {
        let name = column_of(f).map_err(|e| e.to_string())?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        // A bare count: one small column carries the row count.
        names.push("time".into());
    }
    let mask = mask_of(parquet_schema, &schema, &names)?;
    let reader = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| e.to_string())?;
    for batch in reader {
        let batch = batch.map_err(|e| format!("damaged: {e}"))?;
        scan(query, &batch, groups, report)?;
    }
    Ok(())
}

/// Whether the result reads event times: a series, or the first or last time.
fn needs_time(query: &Query) -> bool {
    query.every.is_some() || matches!(query.aggregate, Aggregate::First | Aggregate::Last)
}

/// Adds the rows of a batch the filter kept to their groups.
fn scan(
    query: &Query,
    batch: &RecordBatch,
    groups: &mut Groups,
    report: &mut QueryReport,
) -> Result<(), String> {
    let bad = || "a column of an unexpected type: not an auditwatch archive segment".to_owned();
    let time = if needs_time(query) || query.from.is_some() || query.to.is_some() {
        Some(
            batch
                .column_by_name("time")
                .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
                .ok_or_else(bad)?,
        )
    } else {
        None
    };
    let keys: Vec<Col<'_>> = query
        .group_by
        .iter()
        .map(|f| {
            let name = column_of(f).map_err(|e| e.to_string())?;
            batch
                .column_by_name(&name)
                .and_then(Col::of)
                .ok_or_else(bad)
        })
        .collect::<Result<_, _>>()?;
    let distinct = match &query.aggregate {
        Aggregate::Distinct(f) => {
            let name = column_of(f).map_err(|e| e.to_string())?;
            Some(
                batch
                    .column_by_name(&name)
                    .and_then(Col::of)
                    .ok_or_else(bad)?,
            )
        }
        _ => None,
    };
    let n = batch.num_rows();
    let mut selected = BooleanBuffer::new_set(n);
    for term in conjuncts(&query.filter) {
        let bound = bind(term, batch).ok_or_else(bad)?;
        selected = &selected & &bound.select(n);
    }
    if let (Some(time), true) = (time, query.from.is_some() || query.to.is_some()) {
        let (from, to) = (query.from, query.to);
        let in_range = BooleanBuffer::collect_bool(n, |i| {
            time.is_valid(i)
                && from.is_none_or(|f| time.value(i) >= f.0)
                && to.is_none_or(|t| time.value(i) < t.0)
        });
        selected = &selected & &in_range;
    }
    report.matched += selected.count_set_bits() as u64;
    for i in selected.set_indices() {
        let t = time.and_then(|time| time.is_valid(i).then(|| EventTime(time.value(i))));
        let bucket = query.every.map(|every| {
            let n = every.0.max(1);
            EventTime(t.unwrap_or_default().0.div_euclid(n) * n)
        });
        let key = &mut groups.key;
        key.clear();
        if let Some(b) = bucket {
            let _ = write!(key, "{}", b.0);
        }
        key.push(SEP);
        for (n, col) in keys.iter().enumerate() {
            if n > 0 {
                key.push(SEP);
            }
            col.write_key(i, key);
        }
        let acc = match groups.map.get_mut(key.as_str()) {
            Some((_, acc)) => acc,
            None => {
                &mut groups
                    .map
                    .entry(key.clone())
                    .or_insert((bucket, Acc::default()))
                    .1
            }
        };
        acc.count += 1;
        if let Some(col) = &distinct {
            let mut value = String::new();
            col.write_key(i, &mut value);
            acc.distinct.insert(value);
        }
        if let Some(t) = t {
            acc.first = Some(acc.first.map_or(t, |f| f.min(t)));
            acc.last = Some(acc.last.map_or(t, |l| l.max(t)));
        }
    }
    Ok(())
}

pub use crate::archive::read::{is_archive, row_json, segments};

/// Events of the archive in `paths` (directories or segments) that pass `filter` within
/// `[from, to)`, each rebuilt as its audit event's JSON (nested objects from the dotted
/// column names, raw JSON columns parsed), oldest first; at most `limit`, and how many
/// matched in all. Unreadable segments and foreign files are named in `unreadable`.
pub fn select(
    paths: &[std::path::PathBuf],
    filter: &Expr,
    (from, to): (Option<EventTime>, Option<EventTime>),
    limit: usize,
    unreadable: &mut Vec<(String, String)>,
) -> (Vec<(Option<EventTime>, serde_json::Value)>, u64) {
    let query = Query {
        filter: filter.clone(),
        group_by: Vec::new(),
        aggregate: Aggregate::Count,
        from,
        to,
        every: None,
        top: None,
    };
    let mut out = Vec::new();
    let mut matched = 0u64;
    for path in paths {
        let segments = if path.is_dir() {
            match segments(path, unreadable) {
                Ok(s) => s,
                Err(e) => {
                    unreadable.push((path.display().to_string(), e.to_string()));
                    continue;
                }
            }
        } else {
            vec![path.clone()]
        };
        for segment in segments {
            if let Err(why) = select_segment(&query, &segment, limit, &mut out, &mut matched) {
                unreadable.push((segment.display().to_string(), why));
            }
        }
    }
    out.sort_by_key(|(t, _)| *t);
    out.truncate(limit);
    (out, matched)
}

fn select_segment(
    query: &Query,
    path: &Path,
    limit: usize,
    out: &mut Vec<(Option<EventTime>, serde_json::Value)>,
    matched: &mut u64,
) -> Result<(), String> {
    // Whole rows are costly to decode: here the filter goes first, as row filters.
    let (builder, _) = open_segment(query, path, true)?;
    let reader = builder.build().map_err(|e| e.to_string())?;
    for batch in reader {
        let batch = batch.map_err(|e| format!("damaged: {e}"))?;
        *matched += batch.num_rows() as u64;
        let time = batch
            .column_by_name("time")
            .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>());
        for i in 0..batch.num_rows() {
            if out.len() >= limit.saturating_mul(4).max(limit) {
                // Enough to pick the oldest `limit` from; the rest is only counted.
                break;
            }
            let t = time.and_then(|a| a.is_valid(i).then(|| EventTime(a.value(i))));
            out.push((t, row_json(&batch, i)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole-column integer comparison agrees with the row-by-row one, nulls included.
    #[test]
    fn integer_selection_matches_row_by_row() {
        let codes = arrow_array::Int32Array::from(vec![
            Some(200),
            None,
            Some(403),
            Some(401),
            None,
            Some(500),
        ]);
        let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            "responseStatus.code",
            arrow_schema::DataType::Int32,
            true,
        )]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(codes)]).unwrap();
        for text in [
            "code = 403",
            "code != 403",
            "code < 401",
            "code <= 401",
            "code > 401",
            "code >= 401",
        ] {
            let expr = super::super::lang::parse(text).unwrap();
            let bound = bind(&expr, &batch).unwrap();
            assert!(matches!(bound, Bound::IntCompare(..)), "{text}");
            let fast: Vec<bool> = bound.select(batch.num_rows()).iter().collect();
            let slow: Vec<bool> = (0..batch.num_rows()).map(|i| bound.matches(i)).collect();
            assert_eq!(fast, slow, "{text}");
        }
    }
}
