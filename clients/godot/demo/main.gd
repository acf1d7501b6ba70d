extends Node2D
## Canopy demo (issue 6): one world on a cluster, split into two regions, "west" (x < 0) and "east" (x >= 0).
##
## Each instance owns a few characters (spawned through the ClusterSpawner, placed in the region of their side) and
## walks them back and forth; when one crosses x = 0 its owner calls [method CanopyClient.move_to_region]
## ([code]tree_move[/code]), which re-keys it into the other region in one transaction. Every instance shows every
## character (the spawner's subscription; positions interpolated by the ClusterSynchronizers) and also subscribes to
## both regions, one subscription each, to check the border: a crossing is a [code]leave[/code] in one region and an
## [code]enter[/code] in the other at the same timestamp, so a character is never in both regions or in neither.
## Characters trade coins: wallets are plain keys, a trade is one [method CanopyClient.transaction] (read both
## wallets, move 1-3 coins), and an audit transaction re-reads every wallet twice a second (the total must stay
## 10 x wallets). The HUD shows the wallets, the trades and the crossings.
##
## User arguments (after [code]++[/code]; all optional, so the scene also runs as is from the editor):
## [code]--urls=ws://127.0.0.1:8081/ws,...[/code] (gateways, failed over in order), [code]--tree=demo[/code],
## [code]--name=A[/code] (this instance), [code]--chars=Ada,Bo[/code] (its characters, unique in the world),
## [code]--duration_ms=0[/code] (0 = run forever; otherwise walk and trade that long, then print the report mark and
## quit), [code]--screenshot_at_ms=N[/code] (print the [code]screenshot[/code] mark then; the harness saves the page),
## [code]--screenshot_at_end[/code] (print it once the walk stopped and the last moves landed, before the report),
## [code]--total_chars=N[/code] (wait for N characters before reporting), [code]--trades=0[/code] (no trades, no
## audits), [code]--border_moves=0[/code] (walk without tree_move; for comparisons). The 4.6 web template takes at most
## 7 user arguments (8 crash it at boot; tools/godot-harness/README.md).

const REGIONS: Array[String] = ["west", "east"]
const START_COINS := 10
const HALF_WIDTH := 330.0
const SPEED := 170.0
const COLORS: Array[Color] = [Color(0.95, 0.45, 0.3), Color(0.35, 0.7, 0.95), Color(0.55, 0.85, 0.4),
	Color(0.95, 0.8, 0.3), Color(0.8, 0.5, 0.95), Color(0.4, 0.9, 0.85)]
const CHARACTER_SCENE := "res://character.tscn"

var opts: Dictionary = {}
var instance_name: String = ""
var tree: String = "demo"
var walking: bool = true
var _moving: bool = true
var _owned: Array[Node2D] = []
var _walk: Dictionary = {}  # node -> {dir, base_y, phase, region, in_flight, uuid}
var _moves: Dictionary = {}  # character name -> Array of tree_move ts (committed, by this owner)
var _move_failures: int = 0
var _move_unknown: Dictionary = {}  # character name -> tree_move calls whose outcome was unknown (timeout, ...)
var _move_ms: Array[int] = []  # tree_move round trips
var _trade_ms: Array[int] = []  # trade transactions, begin to commit
var _ping_ms: Array[int] = []  # gateway ping round trips (the floor of the above, on this loaded machine)
var _subs: Dictionary = {}  # region -> CanopySubscription
var _snap: Dictionary = {}  # region -> {ts, ids: Dictionary}
var _events: Array = []  # [ts, region, uuid, "enter"/"leave"] from the region subscriptions
var _names: Dictionary = {}  # uuid -> character name
var _region_of: Dictionary = {}  # uuid -> region as the region subscriptions' copies have it ("" = none)
var _batches: int = 0
var _live_violations: int = 0
var _trades_ok: int = 0
var _trades_aborted: int = 0
var _trades_other: int = 0
var _last_trade: String = "-"
var _audits: int = 0
var _audit_bad: int = 0
var _last_audit: Dictionary = {}
var _started_ms: int = 0
var _rng := RandomNumberGenerator.new()

@onready var _spawner: ClusterSpawner = $Spawner
@onready var _characters: Node2D = $Characters
@onready var _hud: Label = $HUD/Label


func _ready() -> void:
	_rng.randomize()
	for a in OS.get_cmdline_user_args():
		var s := a.trim_prefix("--")
		var eq := s.find("=")
		opts[s if eq < 0 else s.substr(0, eq)] = "true" if eq < 0 else s.substr(eq + 1)
	_moving = opts.get("border_moves", "1") != "0"
	instance_name = str(opts.get("name", "P%03d" % _rng.randi_range(0, 999)))
	tree = str(opts.get("tree", "demo"))
	var urls := str(opts.get("urls", "ws://127.0.0.1:8081/ws,ws://127.0.0.1:8082/ws,ws://127.0.0.1:8083/ws")).split(",", false)
	Canopy.connect_to_cluster(urls, {"tree": tree})
	_run()


func _run() -> void:
	_started_ms = Time.get_ticks_msec()
	if not Canopy.is_ready():
		await Canopy.connected
	print("demo %s: connected to %s (tree %s)" % [instance_name, Canopy.current_url, tree])
	# Both regions, one subscription each (the border check needs the two streams).
	for r in REGIONS:
		var sub := await Canopy.subscribe_region(r)
		_subs[r] = sub
		var ids := {}
		for id: String in sub.nodes:
			ids[id] = true
			_names[id] = str(sub.nodes[id].get("name", "?"))
			_region_of[id] = r
		_snap[r] = {"ts": sub.resolved, "ids": ids}
		sub.batch_applied.connect(_on_region_batch.bind(r))
	if not _spawner.is_cluster_ready():
		await _spawner.cluster_ready
	var names := str(opts.get("chars", instance_name + "1," + instance_name + "2")).split(",", false)
	for i in names.size():
		_spawn_character(names[i], i)
	if opts.get("trades", "1") != "0":
		_trade_loop()
		_audit_loop()
	var duration := int(opts.get("duration_ms", "0"))
	if opts.has("screenshot_at_ms"):
		_screenshot_later(int(opts["screenshot_at_ms"]))
	if duration > 0:
		await _sleep_ms(duration)
		_finish()


func _spawn_character(char_name: String, index: int) -> void:
	var scene := load(CHARACTER_SCENE) as PackedScene
	var c := scene.instantiate() as Node2D
	c.name = char_name
	c.set("display_name", char_name)
	c.set("color", COLORS[absi(char_name.hash()) % COLORS.size()])
	c.set("owned", true)
	var x := _rng.randf_range(40.0, HALF_WIDTH - 20.0) * (-1.0 if index % 2 == 0 else 1.0)
	var base_y := -150.0 + fmod(absf(float(char_name.hash() % 1000)), 300.0)
	c.position = Vector2(x, base_y)
	var region := _side(x)
	c.set_meta(&"canopy_region", region)  # the spawner places it in that region
	_walk[c] = {"dir": 1.0 if _rng.randf() < 0.5 else -1.0, "base_y": base_y, "phase": _rng.randf() * TAU,
		"region": region, "in_flight": true, "uuid": ""}
	_owned.append(c)
	_moves[char_name] = []
	_characters.add_child(c)
	var reg: Array = await _spawner.registered
	while reg[0] != c:
		reg = await _spawner.registered
	_walk[c]["uuid"] = str(reg[1])
	_names[str(reg[1])] = char_name
	var init := await Canopy.transaction(func(txn: CanopyTransaction) -> bool:
		if await txn.has_key(_wallet(char_name)):
			return false
		txn.put(_wallet(char_name), START_COINS)
		return true)
	if str(init.get("status", "")) != "committed":
		push_error("demo: wallet of %s not created: %s" % [char_name, str(init)])
	_walk[c]["in_flight"] = false


func _process(delta: float) -> void:
	queue_redraw()
	if walking:
		for c in _owned:
			var w: Dictionary = _walk[c]
			var x: float = c.position.x + float(w["dir"]) * SPEED * delta
			if absf(x) > HALF_WIDTH:
				w["dir"] = -float(w["dir"])
				x = clampf(x, -HALF_WIDTH, HALF_WIDTH)
			var t := Time.get_ticks_msec() / 1000.0
			c.position = Vector2(x, float(w["base_y"]) + sin(t * 1.7 + float(w["phase"])) * 25.0)
			if _side(x) != str(w["region"]) and not bool(w["in_flight"]) and not str(w["uuid"]).is_empty() and _moving:
				_cross(c, _side(x))
	for c: Node in _characters.get_children():
		var uuid := _spawner.get_cluster_id(c)
		if not uuid.is_empty():
			c.set("region", str(_region_of.get(uuid, "?")))
			if _last_audit.has("balances"):
				c.set("coins", int((_last_audit["balances"] as Dictionary).get(str(c.get("display_name")), -1)))
	_hud.text = _hud_text()


# The owner's side of a crossing: move the node into the region of its new side, one transaction.
func _cross(c: Node2D, region: String) -> void:
	var w: Dictionary = _walk[c]
	w["in_flight"] = true
	var t0 := Time.get_ticks_msec()
	var r := await Canopy.move_to_region(str(w["uuid"]), region)
	_move_ms.append(Time.get_ticks_msec() - t0)
	var code := str(r.get("code", ""))
	if r.get("ok", false):
		w["region"] = region
		(_moves[String(c.name)] as Array).append(str(r.get("ts", "")))
	elif code == "timeout" or code == "disconnected" or code == "ambiguous":
		# The move may or may not have committed: read where the node is now (the crossing, if any, has a
		# timestamp this owner does not know; the check allows one unmatched crossing per unknown outcome).
		_move_unknown[String(c.name)] = int(_move_unknown.get(String(c.name), 0)) + 1
		push_warning("demo: tree_move of %s: outcome unknown (%s); reading it back" % [c.name, code])
		var back := await Canopy.read_tree(str(w["uuid"]), 0)
		if back.get("ok", false) and not (back["nodes"] as Array).is_empty():
			var now_in: Variant = back["nodes"][0].get("region")
			w["region"] = "" if now_in == null else str(now_in)
	else:
		_move_failures += 1
		push_warning("demo: tree_move of %s failed: %s" % [c.name, code])
	w["in_flight"] = false


func _on_region_batch(resolved: String, events: Array, region: String) -> void:
	_batches += 1
	for ev: Dictionary in events:
		var kind := str(ev.get("event", ""))
		if kind != "enter" and kind != "leave":
			continue
		var uuid := str(ev.get("node", ""))
		if kind == "enter":
			_names[uuid] = str(ev.get("name", _names.get(uuid, "?")))
			_region_of[uuid] = region
		elif _region_of.get(uuid, "") == region:
			_region_of[uuid] = ""
		_events.append([str(ev.get("ts", "")), region, uuid, kind])
	# Live check: in the copies of both subscriptions, no character is in both regions.
	var west: CanopySubscription = _subs.get("west")
	var east: CanopySubscription = _subs.get("east")
	if west != null and east != null and west.resolved == east.resolved:
		for id: String in west.nodes:
			if east.nodes.has(id):
				_live_violations += 1


# Every character: exactly one region at every timestamp both subscriptions have resolved. Replays the two event
# streams from the later snapshot to the earlier resolved timestamp, one timestamp at a time.
func _border_check() -> Dictionary:
	var west: CanopySubscription = _subs["west"]
	var east: CanopySubscription = _subs["east"]
	var lo := str(_snap["west"]["ts"])
	if CanopyClient.compare_ts(str(_snap["east"]["ts"]), lo) > 0:
		lo = str(_snap["east"]["ts"])
	var hi := west.resolved if CanopyClient.compare_ts(west.resolved, east.resolved) < 0 else east.resolved
	var inside := {}  # region -> {uuid: true}
	for r in REGIONS:
		inside[r] = (_snap[r]["ids"] as Dictionary).duplicate()
	var events := _events.duplicate()
	events.sort_custom(func(a: Array, b: Array) -> bool: return CanopyClient.compare_ts(a[0], b[0]) < 0)
	var crossings := {}  # name -> Array of ts
	var violations: Array = []
	var i := 0
	while i < events.size():
		var ts: String = events[i][0]
		var group: Array = []
		while i < events.size() and events[i][0] == ts:
			group.append(events[i])
			i += 1
		var before := {}
		for ev: Array in group:
			before[ev[2]] = _count_in(inside, ev[2])
		for ev: Array in group:
			if ev[3] == "enter":
				inside[ev[1]][ev[2]] = true
			else:
				(inside[ev[1]] as Dictionary).erase(ev[2])
		if CanopyClient.compare_ts(ts, lo) <= 0 or CanopyClient.compare_ts(ts, hi) > 0:
			continue  # before both snapshots or after what both have resolved: not judged
		for uuid: String in before:
			var n := _count_in(inside, uuid)
			var name_of := str(_names.get(uuid, uuid))
			if n != 1:
				violations.append("%s in %d regions at %s" % [name_of, n, ts])
			elif int(before[uuid]) == 1:
				var entered := ""
				for ev: Array in group:
					if ev[2] == uuid and ev[3] == "enter":
						entered = ev[1]
				if not entered.is_empty():
					if not crossings.has(name_of):
						crossings[name_of] = []
					(crossings[name_of] as Array).append(ts)
	return {"lo": lo, "hi": hi, "crossings": crossings, "violations": violations}


static func _count_in(inside: Dictionary, uuid: String) -> int:
	var n := 0
	for r: String in inside:
		if (inside[r] as Dictionary).has(uuid):
			n += 1
	return n


# Coins: one wallet key per character, on one of two ranges (by the name's hash), so trades are often cross-range.
func _wallet(char_name: String) -> String:
	return "%s/%s/coins/%s" % ["c" if absi(char_name.hash()) % 2 == 0 else "x", tree, char_name]


func _trade_loop() -> void:
	while walking:
		await _sleep_ms(_rng.randi_range(400, 800))
		if not walking:
			return
		var ready_own: Array[String] = []
		for c in _owned:
			if not str(_walk[c]["uuid"]).is_empty():
				ready_own.append(String(c.name))
		var everyone: Array[String] = []
		for c: Node in _characters.get_children():
			everyone.append(str(c.get("display_name")))
		if ready_own.is_empty() or everyone.size() < 2:
			continue
		var from := ready_own[_rng.randi_range(0, ready_own.size() - 1)]
		var to := from
		while to == from:
			to = everyone[_rng.randi_range(0, everyone.size() - 1)]
		var want := _rng.randi_range(1, 3)
		var t0 := Time.get_ticks_msec()
		var r := await Canopy.transaction(func(txn: CanopyTransaction) -> int:
			var a: Variant = await txn.get_value(_wallet(from), null)
			var b: Variant = await txn.get_value(_wallet(to), null)
			if a == null or b == null or int(a) <= 0:
				txn.abort()  # a wallet not created yet, or empty
				return 0
			var amount := mini(int(a), want)
			txn.put(_wallet(from), int(a) - amount)
			txn.put(_wallet(to), int(b) + amount)
			return amount)
		_trade_ms.append(Time.get_ticks_msec() - t0)
		match str(r.get("status", "")):
			"committed":
				_trades_ok += 1
				_last_trade = "%s -> %s: %d coin%s" % [from, to, int(r["value"]), "" if int(r["value"]) == 1 else "s"]
			"aborted":
				_trades_aborted += 1
			_:
				_trades_other += 1


func _audit_loop() -> void:
	while true:
		await _sleep_ms(500)
		var t0 := Time.get_ticks_msec()
		if (await Canopy.ping()).get("ok", false):
			_ping_ms.append(Time.get_ticks_msec() - t0)
		var r := await Canopy.transaction(func(txn: CanopyTransaction) -> Dictionary:
			var balances := {}
			for letter in ["c", "x"]:
				var prefix := "%s/%s/coins/" % [letter, tree]
				for row: Dictionary in await txn.scan(prefix, prefix.left(prefix.length() - 1) + "0"):
					var key := (row["key"] as PackedByteArray).get_string_from_utf8()
					balances[key.substr(prefix.length())] = int(row["value"])
			return balances)
		if str(r.get("status", "")) != "committed":
			continue
		var balances: Dictionary = r["value"]
		var total := 0
		for k: String in balances:
			total += int(balances[k])
		_audits += 1
		if total != START_COINS * balances.size():
			_audit_bad += 1
			push_error("demo: coins not conserved: %d in %d wallets" % [total, balances.size()])
		_last_audit = {"total": total, "wallets": balances.size(), "balances": balances}


func _hud_text() -> String:
	var lines: Array[String] = []
	lines.append("Canopy demo — instance %s via %s" % [instance_name, Canopy.current_url.trim_prefix("ws://")])
	lines.append("tree %s · regions west | east (tree_move at x = 0) · %d fps" % [tree, Engine.get_frames_per_second()])
	var crossings := 0
	for e: Array in _events:
		if e[3] == "leave":  # nothing is freed during the demo: every leave is half of a crossing
			crossings += 1
	var moved := 0
	for n: String in _moves:
		moved += (_moves[n] as Array).size()
	lines.append("characters %d (own %d) · crossings seen %d (moved by me %d)%s" % [_characters.get_child_count(), _owned.size(),
		crossings, moved, "" if walking else " · stopped"])
	var bal: Dictionary = _last_audit.get("balances", {})
	var names := bal.keys()
	names.sort()
	var row := ""
	for n: String in names:
		row += "%s %d  " % [n, int(bal[n])]
	lines.append("wallets: " + (row if not row.is_empty() else "…"))
	lines.append("coins %d in %d wallets (%s) · audits %d" % [int(_last_audit.get("total", 0)), int(_last_audit.get("wallets", 0)),
		"conserved" if _audit_bad == 0 else "NOT CONSERVED", _audits])
	lines.append("trades %d committed, %d aborted · last: %s" % [_trades_ok, _trades_aborted, _last_trade])
	return "\n".join(lines)


func _draw() -> void:
	# The two regions and the border (world coordinates; the camera is centered on x = 0).
	draw_rect(Rect2(-480, -270, 480, 540), Color(0.13, 0.2, 0.3))
	draw_rect(Rect2(0, -270, 480, 540), Color(0.3, 0.2, 0.13))
	draw_line(Vector2(0, -270), Vector2(0, 270), Color(1, 1, 1, 0.7), 3.0)
	var font := ThemeDB.fallback_font
	draw_string(font, Vector2(-470, 255), "WEST  (region \"west\")", HORIZONTAL_ALIGNMENT_LEFT, -1, 18, Color(0.6, 0.8, 1, 0.8))
	draw_string(font, Vector2(250, 255), "EAST  (region \"east\")", HORIZONTAL_ALIGNMENT_LEFT, -1, 18, Color(1, 0.8, 0.6, 0.8))


func _screenshot_later(at_ms: int) -> void:
	await _sleep_ms(maxi(0, at_ms - (Time.get_ticks_msec() - _started_ms)))
	print("CANOPY_MARK screenshot %s" % JSON.stringify({"instance": instance_name}))


func _finish() -> void:
	walking = false
	# Let the last moves, trades and audits land, and the region subscriptions resolve past them.
	var want := int(opts.get("total_chars", "0"))
	var deadline := Time.get_ticks_msec() + 5000
	while Time.get_ticks_msec() < deadline and (_characters.get_child_count() < want or _in_flight()):
		await get_tree().process_frame
	await _sleep_ms(1500)
	if opts.has("screenshot_at_end"):
		print("CANOPY_MARK screenshot %s" % JSON.stringify({"instance": instance_name}))
		await _sleep_ms(2500)  # the harness saves the page meanwhile
	var border := _border_check()
	var seen: Array[String] = []
	for c: Node in _characters.get_children():
		seen.append(str(c.get("display_name")))
	seen.sort()
	var report := {"instance": instance_name, "url": Canopy.current_url, "owned": _moves.keys(), "moves": _moves,
		"move_failures": _move_failures, "move_unknown": _move_unknown, "move_ms": _stats(_move_ms), "trade_ms": _stats(_trade_ms), "ping_ms": _stats(_ping_ms), "window": {"lo": border["lo"], "hi": border["hi"]}, "crossings": border["crossings"],
		"violations": (border["violations"] as Array).slice(0, 10), "violation_count": (border["violations"] as Array).size(),
		"live_violations": _live_violations, "region_batches": _batches, "characters_seen": seen,
		"trades_committed": _trades_ok, "trades_aborted": _trades_aborted, "trades_other": _trades_other,
		"audits": _audits, "audits_not_conserved": _audit_bad, "last_audit": _last_audit, "batch_stats": Canopy.batch_stats,
		"op_counts": Canopy.op_counts, "frames": Engine.get_process_frames(),
		"fps": snappedf(Engine.get_process_frames() * 1000.0 / maxf(Time.get_ticks_msec() - _started_ms, 1.0), 0.1)}
	print("CANOPY_MARK report %s" % JSON.stringify(report))
	Canopy.disconnect_from_cluster()
	get_tree().quit(0 if (border["violations"] as Array).is_empty() and _audit_bad == 0 else 1)


static func _stats(ms: Array[int]) -> Dictionary:
	if ms.is_empty():
		return {"n": 0}
	var sorted := ms.duplicate()
	sorted.sort()
	return {"n": sorted.size(), "p50": sorted[sorted.size() / 2], "max": sorted[-1]}


func _in_flight() -> bool:
	for c in _owned:
		if bool(_walk[c]["in_flight"]):
			return true
	return false


func _side(x: float) -> String:
	return "west" if x < 0.0 else "east"


func _sleep_ms(ms: int) -> void:
	var until := Time.get_ticks_msec() + ms
	while Time.get_ticks_msec() < until:
		await get_tree().process_frame
