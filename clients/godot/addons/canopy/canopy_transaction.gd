class_name CanopyTransaction
extends RefCounted
## One serializable transaction, handed to the body of [method CanopyClient.transaction].
##
## Keys are Strings (stored as UTF-8) or PackedByteArrays. Values are any Variant without objects, stored as
## [method @GlobalScope.var_to_bytes] writes them ([method put_bytes] / [method get_bytes] for raw bytes). Reads are
## coroutines ([code]await txn.get_value("gold")[/code]); writes are pipelined: [method put] and [method delete] return
## at once and the commit waits for their answers. After a failed operation [member failed] is true, the reads return
## their default, and the transaction is rolled back and (when the failure is retryable) run again.
## [br][br]
## The read is named [code]get_value[/code], not [code]get[/code], because [method Object.get] cannot be overridden.

## The server's transaction id.
var id: String = ""
## The transaction's read timestamp ("wall.logical").
var read_ts: String = ""
## An operation of this transaction failed (see [member error_code]); the transaction will not commit.
var failed: bool = false
var error_code: String = ""
var error_message: String = ""

var _client: CanopyClient
var _outstanding: Array = []
var _aborted: bool = false


func _init(client: CanopyClient, txn_id: String, ts: String) -> void:
	_client = client
	id = txn_id
	read_ts = ts


## Reads a key and decodes its value; [param default] when it is absent or the read failed.
func get_value(key: Variant, default: Variant = null) -> Variant:
	var r := await _read(key)
	if r.is_empty() or not r.get("found", false) or not (r.get("value") is PackedByteArray):
		return default
	return bytes_to_var(r["value"])


## Reads a key's raw bytes; an empty array when it is absent.
func get_bytes(key: Variant) -> PackedByteArray:
	var r := await _read(key)
	if r.is_empty() or not r.get("found", false) or not (r.get("value") is PackedByteArray):
		return PackedByteArray()
	return r["value"]


## Whether a key exists.
func has_key(key: Variant) -> bool:
	var r := await _read(key)
	return not r.is_empty() and bool(r.get("found", false))


## Writes [code]var_to_bytes(value)[/code] under a key.
func put(key: Variant, value: Variant) -> void:
	put_bytes(key, var_to_bytes(value))


## Writes raw bytes under a key.
func put_bytes(key: Variant, value: PackedByteArray) -> void:
	_write("txn_put", {"txn": id, "key": to_key(key), "value": value})


## Deletes a key.
func delete(key: Variant) -> void:
	_write("txn_delete", {"txn": id, "key": to_key(key)})


## Reads keys in [[param start], [param end]) in key order, at most [param limit] (up to 1000). Each row is
## [code]{key: PackedByteArray, value: decoded Variant, bytes: PackedByteArray}[/code].
func scan(start: Variant, end: Variant, limit: int = 1000) -> Array[Dictionary]:
	var rows: Array[Dictionary] = []
	if failed:
		return rows
	await _settle()
	var r := await _client.request("txn_scan", {"txn": id, "start": to_key(start), "end": to_key(end), "limit": limit})
	if not _check(r):
		return rows
	for row: Dictionary in r.get("rows", []):
		var bytes: PackedByteArray = row.get("value", PackedByteArray())
		rows.append({"key": row.get("key", PackedByteArray()), "value": bytes_to_var(bytes), "bytes": bytes})
	return rows


## Ends the transaction without committing: [method CanopyClient.transaction] then returns status "aborted",
## reason "rolled_back".
func abort() -> void:
	_aborted = true


func is_aborted() -> bool:
	return _aborted


## A String key as bytes (UTF-8); bytes unchanged.
static func to_key(key: Variant) -> PackedByteArray:
	if key is PackedByteArray:
		return key
	return str(key).to_utf8_buffer()


func _read(key: Variant) -> Dictionary:
	if failed:
		return {}
	var r := await _client.request("txn_get", {"txn": id, "key": to_key(key)})
	return r if _check(r) else {}


func _write(op: String, fields: Dictionary) -> void:
	if failed:
		return
	if not _client.is_ready():
		_fail("disconnected", "%s: not connected" % op)
		return
	_outstanding.append(_client._send(op, fields, Time.get_ticks_msec() + _client.request_timeout_ms))


## Waits for the answers of the pipelined writes.
func _settle() -> void:
	var outstanding := _outstanding
	_outstanding = []
	for p: CanopyClient.PendingRequest in outstanding:
		var answer: Dictionary = await p.wait()
		_check(answer)


func _check(answer: Dictionary) -> bool:
	if answer.get("ok", false):
		return true
	_fail(str(answer.get("code", "")), str(answer.get("message", "")))
	return false


func _fail(code: String, message: String) -> void:
	if failed:
		return
	failed = true
	error_code = code
	error_message = message
