extends CanopyTest
## Benchmark (tools/godot-harness/bench.sh): --n entities moved at --hz (20) for --duration_ms by role a, seen by
## role b. --mode=canopy: a's ClusterSynchronizers write through a's server (one tree_set_many per tick), b's
## ClusterSpawner subscription on another server applies the batches. --mode=relay: the same per-tick payload goes
## from a to b through a bare WebSocket relay (--relay URL): the floor. Both pages run in one browser, so they share
## the clock performance.timeOrigin + performance.now() (sub-ms). b reports end-to-end latency (a's tick time → b has
## applied it) and, in canopy mode, the resolved-timestamp lag (b's clock at apply − the batch's resolved wall time).

const ENTITY_SCENE := "res://tests/scenes/entity.tscn"
const WARMUP_TICKS := 20

var _lat: Array[float] = []
var _lag: Array[float] = []
var _ticks_seen: Dictionary = {}
var _max_tick: int = 0


func clock_ms() -> float:
	return float(JavaScriptBridge.eval("performance.timeOrigin + performance.now()", true))


func run() -> void:
	var relay := arg("mode", "canopy") == "relay"
	if not relay and not await connect_canopy():
		return
	var role_a := arg("role") == "a"
	if relay and role_a:
		await _relay_a()
	elif relay:
		await _relay_b()
	elif role_a:
		await _canopy_a()
	else:
		await _canopy_b()


func _world(subscribe: bool) -> Array:
	var players := Node.new()
	players.name = "Entities"
	add_child(players)
	var spawner := ClusterSpawner.new()
	spawner.spawn_path = NodePath("../Entities")
	spawner.add_spawnable_scene(ENTITY_SCENE)
	spawner.auto_subscribe = subscribe
	add_child(spawner)
	return [players, spawner]


func _ticks() -> int:
	return int(arg("duration_ms", "10000")) * int(arg("hz", "20")) / 1000


# Runs body(tick, now_ms) at --hz on a fixed schedule (frames are 60 fps, so a tick lands on the first frame after it is due).
func _tick_loop(body: Callable) -> void:
	var period := 1000.0 / float(arg("hz", "20"))
	var ticks := _ticks()
	var start := clock_ms()
	var k := 1
	while k <= ticks:
		var now := clock_ms()
		if now >= start + (k - 1) * period:
			step = "tick %d" % k
			body.call(k, now)
			k += 1
		await get_tree().process_frame


func _canopy_a() -> void:
	var n := int(arg("n", "10"))
	var w := _world(false)
	var spawner: ClusterSpawner = w[1]
	if not await wait_until(spawner.is_cluster_ready, 20000, "a's spawner"):
		return
	var ents: Array[Node2D] = []
	for i in n:
		var e: Node2D = (load(ENTITY_SCENE) as PackedScene).instantiate()
		e.name = "E%d" % i
		e.position = Vector2(i, 0)
		(w[0] as Node).add_child(e)
		ents.append(e)
	if not await wait_until(func() -> bool:
		for e in ents:
			if not (e.get_node("Sync") as ClusterSynchronizer).is_owner():
				return false
		return not Canopy.has_pending_writes(), 40000, "%d entities registered and owned" % n):
		return
	check_ok(await Canopy.spawn_node("/", "A_spawned", "Node"), "a publishes /A_spawned")
	await poll_until(func() -> bool: return (await Canopy.read_tree("/B_ready", 0)).get("ok", false), 40000, "b to be ready", 100)
	var before: Dictionary = Canopy.batch_stats.duplicate()
	await _tick_loop(func(k: int, now: float) -> void:
		for e in ents:
			e.position = Vector2(e.position.x, k)
			e.set("tick", k)
			e.set("sent_ms", now))
	await wait_until(func() -> bool: return not Canopy.has_pending_writes(), 15000, "the last writes")
	check_ok(await Canopy.spawn_node("/", "A_done", "Node", {"ticks": _ticks()}), "a publishes /A_done")
	var stats := {}
	for k: String in Canopy.batch_stats:
		stats[k] = int(Canopy.batch_stats[k]) - (0 if k == "max_nodes" else int(before[k]))
	stats["ticks"] = _ticks()
	mark("a_stats", stats)


func _canopy_b() -> void:
	var n := int(arg("n", "10"))
	await poll_until(func() -> bool: return (await Canopy.read_tree("/A_spawned", 0)).get("ok", false), 50000, "a's entities", 100)
	var w := _world(true)
	var players: Node = w[0]
	var spawner: ClusterSpawner = w[1]
	if not await wait_until(func() -> bool: return spawner.is_cluster_ready() and players.get_child_count() == n, 30000, "b to spawn %d entities" % n):
		return
	spawner.get_subscription().batch_applied.connect(func(resolved: String, events: Array) -> void:
		_measure_canopy.call_deferred(resolved, events))  # after the synchronizers applied the batch
	check_ok(await Canopy.spawn_node("/", "B_ready", "Node"), "b publishes /B_ready")
	var ticks := _ticks()
	await wait_until(func() -> bool: return _max_tick >= ticks, int(arg("duration_ms", "10000")) + 20000, "tick %d" % ticks)
	_report(ticks)


func _measure_canopy(resolved: String, events: Array) -> void:
	var now := clock_ms()
	if _max_tick >= WARMUP_TICKS:
		_lag.append(now - float(resolved.get_slice(".", 0).to_int()) / 1.0e6)
	var sent := {}
	for ev: Dictionary in events:
		var props: Dictionary = ev.get("props", {})
		if props.has(".:tick") and props.has(".:sent_ms"):
			sent[int(props[".:tick"])] = float(props[".:sent_ms"])
	for k: int in sent:
		_ticks_seen[k] = true
		_max_tick = maxi(_max_tick, k)
		if k > WARMUP_TICKS:
			_lat.append(now - float(sent[k]))


func _relay_connect() -> WebSocketPeer:
	var ws := WebSocketPeer.new()
	ws.inbound_buffer_size = 4 * 1024 * 1024
	ws.outbound_buffer_size = 4 * 1024 * 1024
	ws.connect_to_url(arg("relay"))
	var deadline := now_ms() + 10000
	while ws.get_ready_state() != WebSocketPeer.STATE_OPEN and now_ms() < deadline:
		ws.poll()
		await get_tree().process_frame
	check(ws.get_ready_state() == WebSocketPeer.STATE_OPEN, "connected to the relay %s" % arg("relay"))
	return ws


func _relay_a() -> void:
	var n := int(arg("n", "10"))
	var ws: WebSocketPeer = await _relay_connect()
	var ents: Array[Node2D] = []
	for i in n:
		var e: Node2D = (load(ENTITY_SCENE) as PackedScene).instantiate()
		e.name = "E%d" % i
		e.position = Vector2(i, 0)
		add_child(e)
		ents.append(e)
	step = "waiting for b"
	var ready := false
	var deadline := now_ms() + 30000
	while not ready and now_ms() < deadline:
		ws.poll()
		while ws.get_available_packet_count() > 0:
			ready = ready or bytes_to_var(ws.get_packet()) is String
		await get_tree().process_frame
	if not check(ready, "b is ready"):
		return
	await _tick_loop(func(k: int, now: float) -> void:
		var payload := {}
		for e in ents:
			e.position = Vector2(e.position.x, k)
			payload[String(e.name)] = {".:position": e.position, ".:tick": k, ".:sent_ms": now}
		ws.send(var_to_bytes(payload))
		ws.poll())
	ws.send(var_to_bytes({"done": _ticks()}))
	ws.poll()
	mark("a_stats", {"ticks": _ticks()})
	var flush := now_ms() + 500
	while now_ms() < flush:
		ws.poll()
		await get_tree().process_frame


func _relay_b() -> void:
	var n := int(arg("n", "10"))
	var ws: WebSocketPeer = await _relay_connect()
	var ents := {}
	for i in n:
		var e: Node2D = (load(ENTITY_SCENE) as PackedScene).instantiate()
		e.name = "E%d" % i
		add_child(e)
		ents[String(e.name)] = e
	var ticks := _ticks()
	var done := false
	var next_ready := 0
	var deadline := now_ms() + int(arg("duration_ms", "10000")) + 30000
	step = "receiving"
	while not done and now_ms() < deadline:
		if _max_tick == 0 and now_ms() >= next_ready:
			ws.send(var_to_bytes("ready"))
			next_ready = now_ms() + 250
		ws.poll()
		while ws.get_available_packet_count() > 0:
			var msg: Variant = bytes_to_var(ws.get_packet())
			if not msg is Dictionary:
				continue
			if (msg as Dictionary).has("done"):
				done = true
				continue
			var now := clock_ms()
			var k := 0
			var sent := 0.0
			for id: String in msg:
				var props: Dictionary = msg[id]
				var e: Node2D = ents.get(id)
				if e != null:
					e.position = props[".:position"]
					e.set("tick", props[".:tick"])
				k = int(props[".:tick"])
				sent = float(props[".:sent_ms"])
			_ticks_seen[k] = true
			_max_tick = maxi(_max_tick, k)
			if k > WARMUP_TICKS:
				_lat.append(clock_ms() - sent)
		await get_tree().process_frame
	check(done, "a's end of run arrived")
	_report(ticks)


func _pct(values: Array[float], p: float) -> float:
	if values.is_empty():
		return -1.0
	var s := values.duplicate()
	s.sort()
	return snappedf(float(s[clampi(int(ceil(p * s.size())) - 1, 0, s.size() - 1)]), 0.01)


func _report(ticks: int) -> void:
	check(not _lat.is_empty(), "latency samples collected")
	mark("b_stats", {"ticks_sent": ticks, "ticks_seen": _ticks_seen.size(), "samples": _lat.size(),
		"lat_p50_ms": _pct(_lat, 0.5), "lat_p99_ms": _pct(_lat, 0.99), "lat_max_ms": _pct(_lat, 1.0),
		"lag_p50_ms": _pct(_lag, 0.5), "lag_p99_ms": _pct(_lag, 0.99), "lag_max_ms": _pct(_lag, 1.0), "lag_samples": _lag.size()})
