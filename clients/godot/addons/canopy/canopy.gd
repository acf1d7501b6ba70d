class_name CanopyClient
extends Node
## The connection to a Canopy cluster (registered as the autoload [code]Canopy[/code] by the plugin).
##
## Speaks the WebSocket gateway protocol v1 (docs/protocol.md): every frame is one Variant Dictionary
## ([method @GlobalScope.var_to_bytes]). One instance keeps one WebSocket to one server of the cluster and fails over
## to the next URL of the list, with backoff, whenever the connection drops. It owns a session (a random id, opened after
## every handshake and renewed in the background every lease / 3), so nodes it takes stay owned across reconnects.
## [br][br]
## Requests are coroutines: [code]var r := await Canopy.read_tree("/World")[/code]. Every one returns the server's answer
## Dictionary with an added [code]ok[/code] key: [code]true[/code] for a result, [code]false[/code] for an error, whose
## [code]code[/code] is the protocol's error code or one of the local codes [code]"disconnected"[/code] (the connection
## dropped before the answer), [code]"timeout"[/code] and [code]"not_connected"[/code]. Requests made while the client is
## reconnecting wait for the connection (up to [member request_timeout_ms]).
## [br][br]
## Transactions: [method transaction]. Subscriptions: [method subscribe_subtree], [method subscribe_region].
## [ClusterSpawner] and [ClusterSynchronizer] are built on this class.

## The handshake succeeded and the session is open (first connection only).
signal connected()
## The connection dropped; the client is already trying the next server.
signal disconnected(reason: String)
## The client is connected again (possibly to another server), its session re-opened; subscriptions resume.
signal reconnected()
## A problem that belongs to no request: a refused handshake, an error without request id, a lost session.
signal error(code: String, message: String)

enum State { DISCONNECTED, CONNECTING, HANDSHAKING, CONNECTED, WAITING }

const PROTOCOL_VERSION := 1
const DEFAULT_TOKEN := "canopy-dev-token"
## Error codes (protocol and local) after which running the same request or transaction again may succeed.
const RETRYABLE_CODES: Array[String] = ["unavailable", "txn_aborted", "rate_limited", "disconnected", "timeout", "not_connected"]

## The shared token sent in the hello (option [code]token[/code]).
var token: String = DEFAULT_TOKEN
## The scene tree (a key namespace of the cluster) used by the tree helpers and subscriptions (option [code]tree[/code]).
var tree_name: String = "world"
## Lease of the session in milliseconds (option [code]session_lease_ms[/code]); renewed every third of it.
var session_lease_ms: int = 5000
## How long a request may wait for its answer, including time spent waiting for a connection (option [code]request_timeout_ms[/code]).
var request_timeout_ms: int = 10000
## How long a WebSocket connect plus handshake may take before the next server is tried (option [code]connect_timeout_ms[/code]).
var connect_timeout_ms: int = 3000
## First reconnect delay; doubles per failed attempt up to [member backoff_max_ms] (options of the same names).
var backoff_min_ms: int = 100
var backoff_max_ms: int = 2000
## With nothing received for this long the connection is pinged; after [member dead_after_ms] of silence it is dropped.
var keepalive_ms: int = 1000
var dead_after_ms: int = 4000
## This client's session id (random unless option [code]session[/code] is given).
var session_id: String = ""
## The URL of the server currently (or last) connected to.
var current_url: String = ""
## The server's name for this connection (the welcome's [code]session[/code]); for logs.
var connection_id: String = ""
## How many times a connection was established (1 after the first, 2 after the first reconnect, ...).
var connection_count: int = 0

var _urls: PackedStringArray = PackedStringArray()
var _url_index: int = -1
var _ws: WebSocketPeer = null
var _state: State = State.DISCONNECTED
var _state_since_ms: int = 0
var _next_attempt_ms: int = 0
var _failures: int = 0
var _generation: int = 0
var _next_id: int = 1
var _pending: Dictionary = {}
var _session_ready: bool = false
var _next_renew_ms: int = 0
var _renew_in_flight: bool = false
var _last_rx_ms: int = 0
var _ping_in_flight: bool = false
var _subs: Array[CanopySubscription] = []
var _subs_by_id: Dictionary = {}
var _early_batches: Dictionary = {}
var _synchronizers: Dictionary = {}
var _batch_pending: Dictionary = {}
var _batch_regions: Dictionary = {}
var _batch_owners: Dictionary = {}
var _batch_in_flight: bool = false
var _batch_held: Dictionary = {}  # UUID -> moves in flight (move_to_region): its writes wait
var _batch_started: int = 0
var _batch_finished: int = 0
var _batch_flush_queued: bool = false
var _batch_coalesced_frame: int = -1
## Counters of the synchronizers' batched writes ([method queue_property_write]): [code]requests[/code]
## ([code]tree_set_many[/code] sent), [code]nodes[/code] and [code]props[/code] (written, summed over the requests),
## [code]max_nodes[/code] (the largest batch), [code]coalesced[/code] (frames whose changes waited for the write in
## flight and went out merged into the next batch), [code]retried[/code] (batches sent again after a retryable error), [code]dropped[/code] (node entries
## given up: not owned, not found, refused).
## Requests sent per op (e.g. [code]op_counts["tree_set_many"][/code]); for diagnostics and tests.
var op_counts: Dictionary = {}
var batch_stats: Dictionary = {"requests": 0, "nodes": 0, "props": 0, "max_nodes": 0, "coalesced": 0, "retried": 0, "dropped": 0}
var _rng: RandomNumberGenerator = RandomNumberGenerator.new()


func _init() -> void:
	_rng.randomize()
	session_id = _random_id()


func _process(_delta: float) -> void:
	match _state:
		State.DISCONNECTED:
			return
		State.WAITING:
			if _now() >= _next_attempt_ms:
				_open_next()
		_:
			_poll_socket()


## Starts connecting to the cluster; returns at once ([code]await Canopy.connected[/code] for the result).
## [param urls]: WebSocket URLs of several servers ([code]ws://host:port/ws[/code]), tried in order and failed over.
## [param options]: [code]token[/code], [code]tree[/code], [code]session[/code], [code]session_lease_ms[/code],
## [code]request_timeout_ms[/code], [code]connect_timeout_ms[/code], [code]backoff_min_ms[/code], [code]backoff_max_ms[/code].
func connect_to_cluster(urls: PackedStringArray, options: Dictionary = {}) -> Error:
	if urls.is_empty():
		return ERR_INVALID_PARAMETER
	disconnect_from_cluster()
	_urls = urls
	token = str(options.get("token", token))
	tree_name = str(options.get("tree", tree_name))
	session_id = str(options.get("session", session_id))
	session_lease_ms = int(options.get("session_lease_ms", session_lease_ms))
	request_timeout_ms = int(options.get("request_timeout_ms", request_timeout_ms))
	connect_timeout_ms = int(options.get("connect_timeout_ms", connect_timeout_ms))
	backoff_min_ms = int(options.get("backoff_min_ms", backoff_min_ms))
	backoff_max_ms = int(options.get("backoff_max_ms", backoff_max_ms))
	_url_index = -1
	_failures = 0
	_open_next()
	return OK


## Closes the connection and stops reconnecting. Pending requests end with [code]"disconnected"[/code].
func disconnect_from_cluster() -> void:
	var was_connected := _state == State.CONNECTED
	_state = State.DISCONNECTED
	_close_socket("disconnect_from_cluster()")
	if was_connected:
		disconnected.emit("disconnect_from_cluster()")


## The WebSocket is up, the handshake done and the session open: requests are sent at once.
func is_ready() -> bool:
	return _state == State.CONNECTED and _session_ready


## The connection state ([enum State]).
func get_state() -> State:
	return _state


## Sends one request and returns its answer (a coroutine). [param fields] are the op's fields
## (docs/protocol.md); [code]op[/code] and [code]id[/code] are added. Waits for the connection when reconnecting.
func request(op: String, fields: Dictionary = {}, timeout_ms: int = -1) -> Dictionary:
	var deadline := _now() + (timeout_ms if timeout_ms > 0 else request_timeout_ms)
	while not is_ready():
		if _state == State.DISCONNECTED:
			return _local_error("not_connected", "%s: connect_to_cluster() first" % op)
		if _now() >= deadline:
			return _local_error("timeout", "%s: not connected within the request timeout" % op)
		await get_tree().process_frame
	var pending := _send(op, fields, deadline)
	return await pending.wait()


## Answers whether a request's answer is an error that may go away when retried.
static func is_retryable(answer: Dictionary) -> bool:
	return not answer.get("ok", false) and RETRYABLE_CODES.has(str(answer.get("code", "")))


## Compares two timestamps [code]"wall.logical"[/code]: negative, 0 or positive. An empty one is the smallest.
static func compare_ts(a: String, b: String) -> int:
	if a == b:
		return 0
	if a.is_empty():
		return -1
	if b.is_empty():
		return 1
	var pa := a.split(".")
	var pb := b.split(".")
	var wa := pa[0].to_int()
	var wb := pb[0].to_int()
	if wa != wb:
		return -1 if wa < wb else 1
	var la := pa[1].to_int() if pa.size() > 1 else 0
	var lb := pb[1].to_int() if pb.size() > 1 else 0
	return 0 if la == lb else (-1 if la < lb else 1)


# -------------------------------------------------------------------------------------------- transactions

## Runs [param body] in a serializable transaction and commits it; reruns the whole body after retryable aborts.
## [param body] gets a [CanopyTransaction] and may await its reads; what it returns comes back as [code]value[/code].
## Returns [code]{status: "committed", commit_ts, value, attempts}[/code],
## [code]{status: "aborted", reason, message, retryable, attempts}[/code] or
## [code]{status: "ambiguous", reason, message, attempts}[/code] (the commit may or may not have happened: re-read).
## [param options]: [code]max_attempts[/code] (default 5), [code]priority[/code] ("normal", "high", "low").
func transaction(body: Callable, options: Dictionary = {}) -> Dictionary:
	var max_attempts := int(options.get("max_attempts", 5))
	var priority := str(options.get("priority", "normal"))
	var last: Dictionary = {}
	for attempt in range(1, max_attempts + 1):
		if attempt > 1:
			await _sleep_ms(_backoff_ms(attempt - 1))
		var begin := await request("txn_begin", {"priority": priority})
		if not begin.get("ok", false):
			last = _aborted(begin, attempt)
			if last["retryable"]:
				continue
			return last
		var txn := CanopyTransaction.new(self, str(begin["txn"]), str(begin.get("read_ts", "")))
		var value: Variant = await body.call(txn)
		await txn._settle()
		if txn.failed or txn.is_aborted():
			await request("txn_rollback", {"txn": txn.id})
			if txn.is_aborted() and not txn.failed:
				return {"status": "aborted", "reason": "rolled_back", "message": "the body called abort()", "retryable": false, "attempts": attempt}
			last = {"status": "aborted", "reason": txn.error_code, "message": txn.error_message,
				"retryable": RETRYABLE_CODES.has(txn.error_code), "attempts": attempt}
			if last["retryable"]:
				continue
			return last
		var commit := await request("txn_commit", {"txn": txn.id})
		if not commit.get("ok", false):
			var code := str(commit.get("code", ""))
			if code == "disconnected" or code == "timeout" or code == "ambiguous":
				return {"status": "ambiguous", "reason": code, "message": str(commit.get("message", "")), "attempts": attempt}
			last = _aborted(commit, attempt)
			if last["retryable"]:
				continue
			return last
		match str(commit.get("status", "")):
			"committed":
				return {"status": "committed", "commit_ts": str(commit.get("commit_ts", "")), "value": value, "attempts": attempt}
			"aborted":
				last = {"status": "aborted", "reason": str(commit.get("reason", "")), "message": "",
					"retryable": bool(commit.get("retryable", false)), "attempts": attempt}
				if last["retryable"]:
					continue
				return last
			_:
				return {"status": "ambiguous", "reason": str(commit.get("reason", "")), "message": "", "attempts": attempt}
	return last


# -------------------------------------------------------------------------------------------- scene tree

## Spawns a node under [param parent] (a path such as [code]"/World"[/code] or a UUID). [param type] is a class name
## or a [code]res://[/code] scene path. Result: [code]node[/code] (the UUID), [code]ts[/code].
func spawn_node(parent: String, node_name: String, type: String, props: Dictionary = {}, region: String = "") -> Dictionary:
	var fields := {"tree": tree_name, "parent": parent, "name": node_name, "type": type, "props": props}
	if not region.is_empty():
		fields["region"] = region
	return await request("tree_spawn", fields)


## Writes properties of a node (nil deletes one) as this client's session. Result: [code]ts[/code]; error
## [code]not_owner[/code] when another session owns the node.
func set_props(node: String, props: Dictionary) -> Dictionary:
	return await request("tree_set", {"tree": tree_name, "session": session_id, "node": node, "props": props})


## Reads a node and its descendants ([param depth] -1 = all). Result: [code]ts[/code], [code]nodes[/code] (Array of
## Dictionaries: id, parent, name, type, kind, owner, region, props).
func read_tree(node: String, depth: int = -1) -> Dictionary:
	var fields := {"tree": tree_name, "node": node}
	if depth >= 0:
		fields["depth"] = depth
	return await request("tree_read", fields)


## Moves a node into [param region] atomically ([code]tree_move[/code]): one transaction re-keys all of the node's
## keys to the region's home, so a subscriber of both regions sees it in exactly one of them at every resolved
## timestamp (one subscription per region: a [code]leave[/code] and an [code]enter[/code] at the same [code]ts[/code]).
## [param node]: a UUID or path; [param region] "" moves it back to hash placement; [param subtree] moves its
## descendants too. Not subject to ownership. Result: [code]moved[/code] (nodes re-keyed), [code]ts[/code]. When
## [param node] is a UUID: this client's batched writes of the node are held while the move is in flight (the batch
## in flight is answered first; changes made meanwhile are queued and go out right after), because a write stream
## to the same keys would keep conflicting with the re-keying; and the placement hint of the batched writes and of
## the node's registered [ClusterSynchronizer]s ([member ClusterSynchronizer.cluster_region]) follow the move.
func move_to_region(node: String, region: String, subtree: bool = false) -> Dictionary:
	var fields := {"tree": tree_name, "node": node, "region": null if region.is_empty() else region}
	if subtree:
		fields["subtree"] = true
	_batch_held[node] = int(_batch_held.get(node, 0)) + 1
	# Only the batch in flight now may hold the node's last writes; later batches leave it out.
	var in_flight := _batch_started if _batch_in_flight else 0
	var deadline := _now() + request_timeout_ms
	while _batch_finished < in_flight and _now() < deadline:
		await get_tree().process_frame
	var r := await request("tree_move", fields)
	var holds := int(_batch_held.get(node, 1)) - 1
	if holds <= 0:
		_batch_held.erase(node)
	else:
		_batch_held[node] = holds
	if not _batch_pending.is_empty() and not _batch_in_flight and not _batch_flush_queued:
		_batch_flush_queued = true
		_flush_writes.call_deferred()
	if r.get("ok", false):
		if region.is_empty():
			_batch_regions.erase(node)
		elif _batch_regions.has(node) or _batch_owners.has(node):
			_batch_regions[node] = region
		for sync: Node in (_synchronizers.get(node, []) as Array):
			if is_instance_valid(sync) and "cluster_region" in sync:
				sync.set("cluster_region", region)
	return r


## Frees a node and its subtree everywhere. Result: [code]freed[/code], [code]ts[/code].
func free_node(node: String) -> Dictionary:
	return await request("tree_free", {"tree": tree_name, "node": node})


## Takes ownership of nodes (UUIDs or paths) for this client's session.
func take_ownership(nodes: Array) -> Dictionary:
	return await request("own_take", {"tree": tree_name, "session": session_id, "nodes": nodes})


## Gives up ownership of nodes this session owns.
func release_ownership(nodes: Array) -> Dictionary:
	return await request("own_release", {"tree": tree_name, "session": session_id, "nodes": nodes})


## Hands a node this session owns over to [param to_session], writing [param props] in the same transaction.
func handoff(node: String, to_session: String, props: Dictionary = {}) -> Dictionary:
	return await request("own_handoff", {"tree": tree_name, "from": session_id, "to": to_session, "node": node, "props": props})


## Liveness of the connection and the server.
func ping() -> Dictionary:
	return await request("ping", {})


# -------------------------------------------------------------------------------------------- batched writes

## Queues changed properties of the owned node [param uuid] (a UUID) for the next batched write: at the end of the
## frame, the queued changes of every node go out as ONE [code]tree_set_many[/code] (one transaction) as this
## client's session, with [param region] as placement hint ("" = unknown, [code]null[/code] hint = hash placement
## is never guessed). At most one batch is in flight: changes queued meanwhile are coalesced (a later value of a
## property replaces the queued one) and sent when the answer arrives, so every node's values commit in the order
## they were made. [param writer] (a [ClusterSynchronizer]) hears about refusals through
## [code]_on_write_refused(answer)[/code]. Retryable failures (disconnected, unavailable, timeout, ...) are sent
## again, merged under newer values.
func queue_property_write(uuid: String, props: Dictionary, region: String = "", writer: Object = null) -> void:
	if props.is_empty():
		return
	var queued: Dictionary = _batch_pending.get(uuid, {})
	queued.merge(props, true)
	_batch_pending[uuid] = queued
	if not region.is_empty():
		_batch_regions[uuid] = region
	if writer != null:
		_batch_owners[uuid] = writer
	if _batch_in_flight:
		var frame := Engine.get_process_frames()
		if frame != _batch_coalesced_frame:
			_batch_coalesced_frame = frame
			batch_stats["coalesced"] += 1
		return
	if not _batch_flush_queued:
		_batch_flush_queued = true
		_flush_writes.call_deferred()


## Removes and returns the queued (not yet sent) changes of [param uuid] (e.g. before a handoff writes final values).
func take_queued_writes(uuid: String) -> Dictionary:
	var queued: Dictionary = _batch_pending.get(uuid, {})
	_batch_pending.erase(uuid)
	return queued


## Whether a batched write is in flight or queued.
func has_pending_writes() -> bool:
	return _batch_in_flight or not _batch_pending.is_empty()


## Waits until the batched write in flight (if any) is answered, up to [member request_timeout_ms] (a coroutine).
func wait_write_idle() -> void:
	var deadline := _now() + request_timeout_ms
	while _batch_in_flight and _now() < deadline:
		await get_tree().process_frame


func _flush_writes() -> void:
	_batch_flush_queued = false
	if _batch_in_flight or _batch_pending.is_empty():
		return
	var nodes := _batch_pending
	_batch_pending = {}
	for uuid: String in _batch_held:
		if nodes.has(uuid):
			_batch_pending[uuid] = nodes[uuid]  # held while its move is in flight
			nodes.erase(uuid)
	if nodes.is_empty():
		return
	_batch_in_flight = true
	_batch_started += 1
	var hints := {}
	var prop_count := 0
	for uuid: String in nodes:
		prop_count += (nodes[uuid] as Dictionary).size()
		if _batch_regions.has(uuid):
			hints[uuid] = _batch_regions[uuid]
	var fields := {"tree": tree_name, "session": session_id, "nodes": nodes}
	if not hints.is_empty():
		fields["regions"] = hints
	batch_stats["requests"] += 1
	batch_stats["nodes"] += nodes.size()
	batch_stats["props"] += prop_count
	batch_stats["max_nodes"] = maxi(int(batch_stats["max_nodes"]), nodes.size())
	var r := await request("tree_set_many", fields)
	if not r.get("ok", false) and _on_batch_failed(nodes, r):
		await _sleep_ms(_backoff_ms(2))  # still "in flight": nothing overtakes the values being retried
	_batch_in_flight = false
	_batch_finished += 1
	if not _batch_pending.is_empty() and not _batch_flush_queued:
		_batch_flush_queued = true
		_flush_writes.call_deferred()


# Handles a refused batch; true when (part of) it was queued again after a retryable error.
func _on_batch_failed(nodes: Dictionary, r: Dictionary) -> bool:
	var code := str(r.get("code", ""))
	var culprit := str(r.get("node", "")) if r.get("node") != null else ""
	if code == "not_owner" or code == "not_found":
		# Refused as a whole because of one node: tell its writer and send the others again at once. When the
		# answer does not say which node, every writer of the batch checks its ownership.
		var refused: Array = [culprit] if nodes.has(culprit) else nodes.keys()
		for uuid: String in refused:
			nodes.erase(uuid)
			batch_stats["dropped"] += 1
			var writer: Variant = _batch_owners.get(uuid)
			_batch_owners.erase(uuid)
			_batch_pending.erase(uuid)
			if is_instance_valid(writer) and (writer as Object).has_method("_on_write_refused"):
				(writer as Object).call("_on_write_refused", r if uuid == culprit else {})
	elif not RETRYABLE_CODES.has(code) and code != "ambiguous":
		push_warning("Canopy: tree_set_many refused (%s: %s); %d node(s) not written" % [code, str(r.get("message", "")), nodes.size()])
		batch_stats["dropped"] += nodes.size()
		return false
	if nodes.is_empty():
		return false
	# Send again (after "ambiguous" too: writing the same values twice is harmless), older values under newer ones.
	batch_stats["retried"] += 1
	for uuid: String in nodes:
		var older: Dictionary = nodes[uuid]
		older.merge(_batch_pending.get(uuid, {}), true)
		_batch_pending[uuid] = older
	return code != "not_owner" and code != "not_found"


# -------------------------------------------------------------------------------------------- subscriptions

## Subscribes to the subtree at [param node] (a path or UUID; "/" = the whole tree) and returns the subscription after
## the server's first answer (check [member CanopySubscription.active] / [member CanopySubscription.error_code]).
## Its local copy is updated one whole batch at a time; after a reconnect it resumes from the last applied
## [code]resolved[/code] timestamp, with no gap and no repeat.
func subscribe_subtree(node: String = "/") -> CanopySubscription:
	var sub := CanopySubscription.new(self, tree_name, "subtree", node)
	_subs.append(sub)
	await _start_subscription(sub)
	return sub


## Subscribes to every node placed in [param region]; see [method subscribe_subtree].
func subscribe_region(region: String) -> CanopySubscription:
	var sub := CanopySubscription.new(self, tree_name, "region", region)
	_subs.append(sub)
	await _start_subscription(sub)
	return sub


## Ends a subscription.
func unsubscribe(sub: CanopySubscription) -> void:
	_subs.erase(sub)
	if sub.sub_id >= 0:
		_subs_by_id.erase(sub.sub_id)
		var id := sub.sub_id
		sub.sub_id = -1
		sub.active = false
		if is_ready():
			await request("unsubscribe", {"sub": id})


## Routes remote property updates of the node [param uuid] (from any subscription) to [param sync].
func register_synchronizer(uuid: String, sync: Node) -> void:
	var list: Array = _synchronizers.get(uuid, [])
	if not list.has(sync):
		list.append(sync)
	_synchronizers[uuid] = list


func unregister_synchronizer(uuid: String, sync: Node) -> void:
	var list: Array = _synchronizers.get(uuid, [])
	list.erase(sync)
	if list.is_empty():
		_synchronizers.erase(uuid)
	if _batch_owners.get(uuid) == sync:
		_batch_owners.erase(uuid)
		_batch_regions.erase(uuid)


# -------------------------------------------------------------------------------------------- internals

class PendingRequest extends RefCounted:
	## One request waiting for its answer.
	signal finished(answer: Dictionary)
	var id: int = 0
	var op: String = ""
	var deadline_ms: int = 0
	var done: bool = false
	var answer: Dictionary = {}

	func finish(a: Dictionary) -> void:
		if done:
			return
		done = true
		answer = a
		finished.emit(a)

	func wait() -> Dictionary:
		if not done:
			await finished
		return answer


static func _now() -> int:
	return Time.get_ticks_msec()


func _random_id() -> String:
	var b := PackedByteArray()
	b.resize(16)
	for i in 16:
		b[i] = _rng.randi() & 0xff
	return b.hex_encode()


func _local_error(code: String, message: String) -> Dictionary:
	return {"op": "error", "ok": false, "code": code, "message": message}


func _aborted(answer: Dictionary, attempt: int) -> Dictionary:
	var code := str(answer.get("code", ""))
	return {"status": "aborted", "reason": code, "message": str(answer.get("message", "")),
		"retryable": RETRYABLE_CODES.has(code), "attempts": attempt}


func _backoff_ms(failures: int) -> int:
	var d := mini(backoff_max_ms, backoff_min_ms * (1 << mini(maxi(failures - 1, 0), 12)))
	return int(d * _rng.randf_range(0.5, 1.0))


func _sleep_ms(ms: int) -> void:
	await get_tree().create_timer(maxf(ms, 1) / 1000.0).timeout


func _set_state(s: State) -> void:
	_state = s
	_state_since_ms = _now()


func _open_next() -> void:
	_close_socket("")
	_url_index = (_url_index + 1) % _urls.size()
	current_url = _urls[_url_index]
	_generation += 1
	_ws = WebSocketPeer.new()
	_ws.inbound_buffer_size = 4 * 1024 * 1024
	_ws.outbound_buffer_size = 4 * 1024 * 1024
	_ws.max_queued_packets = 8192
	var err := _ws.connect_to_url(current_url)
	if err != OK:
		_set_state(State.CONNECTING)
		_drop("cannot connect to %s: error %d" % [current_url, err])
		return
	_set_state(State.CONNECTING)


func _poll_socket() -> void:
	if _ws == null:
		return
	_ws.poll()
	var st := _ws.get_ready_state()
	if st == WebSocketPeer.STATE_OPEN:
		if _state == State.CONNECTING:
			_set_state(State.HANDSHAKING)
			_last_rx_ms = _now()
			_send_raw({"op": "hello", "version": PROTOCOL_VERSION, "token": token, "id": 0})
		var generation := _generation
		while _ws != null and generation == _generation and _ws.get_available_packet_count() > 0:
			var packet := _ws.get_packet()
			_last_rx_ms = _now()
			var msg: Variant = bytes_to_var(packet)
			if msg is Dictionary:
				_on_message(msg)
			else:
				error.emit("bad_message", "a frame that is not a Dictionary")
		if generation != _generation or _state == State.DISCONNECTED or _state == State.WAITING:
			return
		if _state == State.HANDSHAKING and _now() - _state_since_ms > connect_timeout_ms:
			_drop("no welcome from %s within %d ms" % [current_url, connect_timeout_ms])
		elif _state == State.CONNECTED:
			_tick_connected()
	elif st == WebSocketPeer.STATE_CLOSED:
		_drop("connection to %s closed (%d %s)" % [current_url, _ws.get_close_code(), _ws.get_close_reason()])
	elif _state == State.CONNECTING and _now() - _state_since_ms > connect_timeout_ms:
		_drop("cannot connect to %s within %d ms" % [current_url, connect_timeout_ms])


func _tick_connected() -> void:
	var now := _now()
	var silent := now - _last_rx_ms
	if silent > dead_after_ms:
		_drop("no message from %s for %d ms" % [current_url, silent])
		return
	if silent > keepalive_ms and not _ping_in_flight:
		_ping_in_flight = true
		_keepalive()
	if _session_ready and not _renew_in_flight and now >= _next_renew_ms:
		_renew_in_flight = true
		_renew_session()
	if not _pending.is_empty():
		var expired: Array = []
		for p: PendingRequest in _pending.values():
			if now >= p.deadline_ms:
				expired.append(p)
		for p: PendingRequest in expired:
			_pending.erase(p.id)
			p.finish(_local_error("timeout", "%s: no answer within the request timeout" % p.op))
	if _session_ready:
		for sub in _subs:
			if sub.sub_id < 0 and not sub._in_flight and now >= sub._retry_at_ms:
				_start_subscription(sub)


func _keepalive() -> void:
	var generation := _generation
	var p := _send("ping", {}, _now() + dead_after_ms)
	await p.wait()
	if generation == _generation:
		_ping_in_flight = false


func _send_raw(msg: Dictionary) -> Error:
	if _ws == null or _ws.get_ready_state() != WebSocketPeer.STATE_OPEN:
		return ERR_CONNECTION_ERROR
	return _ws.send(var_to_bytes(msg))


## Sends a request now (the socket must be connected) and returns its pending answer.
func _send(op: String, fields: Dictionary, deadline_ms: int) -> PendingRequest:
	var p := PendingRequest.new()
	p.id = _next_id
	_next_id += 1
	p.op = op
	p.deadline_ms = deadline_ms
	op_counts[op] = int(op_counts.get(op, 0)) + 1
	var msg := fields.duplicate()
	msg["op"] = op
	msg["id"] = p.id
	if _state != State.CONNECTED:
		p.finish(_local_error("disconnected", "%s: not connected" % op))
		return p
	_pending[p.id] = p
	var err := _send_raw(msg)
	if err != OK:
		_pending.erase(p.id)
		p.finish(_local_error("disconnected", "%s: send failed (error %d)" % [op, err]))
	return p


func _on_message(msg: Dictionary) -> void:
	var op := str(msg.get("op", ""))
	if _state == State.HANDSHAKING:
		if op == "welcome":
			_on_welcome(msg)
		else:
			var code := str(msg.get("code", "bad_message"))
			error.emit(code, "handshake with %s refused: %s" % [current_url, str(msg.get("message", op))])
			_drop("handshake refused: %s" % code)
		return
	match op:
		"result", "error":
			var id: Variant = msg.get("id")
			if id is int and _pending.has(id):
				var p: PendingRequest = _pending[id]
				_pending.erase(id)
				msg["ok"] = op == "result"
				p.finish(msg)
			elif op == "error":
				error.emit(str(msg.get("code", "")), str(msg.get("message", "")))
		"sub_batch":
			_on_sub_batch(msg)
		"sub_end":
			_on_sub_end(msg)


func _on_welcome(msg: Dictionary) -> void:
	_set_state(State.CONNECTED)
	_failures = 0
	connection_id = str(msg.get("session", ""))
	connection_count += 1
	_open_session(_generation, connection_count > 1)


func _open_session(generation: int, is_reconnect: bool) -> void:
	var attempt := 0
	while generation == _generation and _state == State.CONNECTED:
		attempt += 1
		var p := _send("session_open", {"tree": tree_name, "session": session_id, "lease_ms": session_lease_ms}, _now() + request_timeout_ms)
		var r := await p.wait()
		if generation != _generation:
			return
		if r.get("ok", false):
			_session_ready = true
			_next_renew_ms = _now() + session_lease_ms / 3
			if is_reconnect:
				reconnected.emit()
			else:
				connected.emit()
			return
		if str(r.get("code", "")) == "disconnected":
			return
		if not RETRYABLE_CODES.has(str(r.get("code", ""))):
			error.emit(str(r.get("code", "")), "session_open: %s" % str(r.get("message", "")))
		await _sleep_ms(_backoff_ms(attempt))


func _renew_session() -> void:
	var generation := _generation
	var r := await _send("session_renew", {"tree": tree_name, "session": session_id}, _now() + session_lease_ms).wait()
	if generation != _generation:
		return
	if r.get("ok", false):
		_next_renew_ms = _now() + session_lease_ms / 3
	elif str(r.get("code", "")) == "not_found" or str(r.get("code", "")) == "bad_request":
		# The lease lapsed (or the session record is gone): open it again under the same id. Nodes nobody took in
		# the meantime are still ours; the synchronizers find out about the others from not_owner / owner changes.
		error.emit("session_lost", "session %s lapsed: %s" % [session_id, str(r.get("message", ""))])
		var again := await _send("session_open", {"tree": tree_name, "session": session_id, "lease_ms": session_lease_ms}, _now() + session_lease_ms).wait()
		if generation != _generation:
			return
		_next_renew_ms = _now() + (session_lease_ms / 3 if again.get("ok", false) else 200)
	else:
		_next_renew_ms = _now() + 200
	_renew_in_flight = false


func _close_socket(reason: String) -> void:
	_generation += 1
	if _ws != null:
		if _ws.get_ready_state() == WebSocketPeer.STATE_OPEN or _ws.get_ready_state() == WebSocketPeer.STATE_CONNECTING:
			_ws.close(1000, reason.left(100))
		_ws = null
	_session_ready = false
	_renew_in_flight = false
	_ping_in_flight = false
	_subs_by_id.clear()
	_early_batches.clear()
	for sub in _subs:
		sub.sub_id = -1
		sub._in_flight = false
		sub._retry_at_ms = 0
	var pending := _pending.values()
	_pending.clear()
	for p: PendingRequest in pending:
		p.finish(_local_error("disconnected", "%s: %s" % [p.op, reason if not reason.is_empty() else "connection closed"]))


func _drop(reason: String) -> void:
	var was_connected := _state == State.CONNECTED
	_close_socket(reason)
	if _state == State.DISCONNECTED:
		return
	_failures += 1
	_next_attempt_ms = _now() + _backoff_ms(_failures)
	_set_state(State.WAITING)
	if was_connected:
		disconnected.emit(reason)


func _start_subscription(sub: CanopySubscription) -> void:
	sub._in_flight = true
	var fields := {"tree": sub.tree_name}
	if sub.kind == "region":
		fields["region"] = sub.target
	else:
		fields["node"] = sub.target
	var resuming := not sub.resolved.is_empty()
	if resuming:
		fields["from_ts"] = sub.resolved
	var generation := _generation
	var r := await request("subscribe", fields)
	if generation != _generation or not _subs.has(sub):
		return
	sub._in_flight = false
	if r.get("ok", false):
		sub.sub_id = int(r["sub"])
		sub.error_code = ""
		_subs_by_id[sub.sub_id] = sub
		if not resuming:
			sub._apply_snapshot(str(r.get("ts", "")), r.get("nodes", []))
		sub.active = true
		sub.resumed_count += 1 if resuming else 0
		var early: Array = _early_batches.get(sub.sub_id, [])
		_early_batches.erase(sub.sub_id)
		for m: Dictionary in early:
			_on_sub_batch(m)
		return
	var code := str(r.get("code", ""))
	sub.error_code = code
	if RETRYABLE_CODES.has(code):
		sub._retry_at_ms = _now() + _backoff_ms(2)
	else:
		_subs.erase(sub)
		sub.active = false
		sub.ended.emit(code, str(r.get("message", "")))


func _on_sub_batch(msg: Dictionary) -> void:
	var id := int(msg.get("sub", -1))
	var sub: CanopySubscription = _subs_by_id.get(id)
	if sub == null:
		# A batch of a subscription whose subscribe answer is still on its way: kept until it arrives.
		var early: Array = _early_batches.get(id, [])
		if early.size() < 256:
			early.append(msg)
		_early_batches[id] = early
		return
	var events: Array = msg.get("events", [])
	sub._apply_batch(str(msg.get("resolved", "")), events)
	if _synchronizers.is_empty():
		return
	for ev: Dictionary in events:
		var list: Array = _synchronizers.get(str(ev.get("node", "")), [])
		for sync: Node in list.duplicate():
			if is_instance_valid(sync) and sync.has_method("_on_remote_event"):
				sync._on_remote_event(ev)


func _on_sub_end(msg: Dictionary) -> void:
	var id := int(msg.get("sub", -1))
	var sub: CanopySubscription = _subs_by_id.get(id)
	if sub == null:
		return
	_subs_by_id.erase(id)
	sub.sub_id = -1
	sub.active = false
	var code := str(msg.get("code", ""))
	if code == "not_found":
		_subs.erase(sub)
		sub.ended.emit(code, str(msg.get("message", "")))
	else:
		# too_slow, unavailable: resume from the last applied resolved timestamp.
		sub._retry_at_ms = _now() + _backoff_ms(1)
