extends CanopyTest
## Needs `subscribe`. Role writer (connected to a server that stays up) writes /Counter's n = 1..N, one committed write
## at a time, pacing itself. Role watcher subscribes to /Counter through its first URL; the test host kills that
## server when the watcher marks "subscribed"; the watcher fails over to the next URL, resumes the subscription from
## its last resolved timestamp, and must see exactly 1..N: no gap, no repeat.


func run() -> void:
	if not await connect_canopy():
		return
	if arg("role") == "writer":
		await _writer()
	else:
		await _watcher()


func _writer() -> void:
	var n := int(arg("n", "60"))
	var made := await Canopy.spawn_node("/", "Counter", "Node", {"n": 0})
	check(made.get("ok", false) or str(made.get("code")) == "name_taken", "/Counter exists")
	await poll_until(func() -> bool: return (await Canopy.read_tree("/Watching", 0)).get("ok", false), 30000, "the watcher")
	for i in range(1, n + 1):
		step = "n = %d" % i
		var w := await Canopy.set_props("/Counter", {"n": i})
		var retry_until := now_ms() + 20000
		while CanopyClient.is_retryable(w) and now_ms() < retry_until:
			await get_tree().create_timer(0.1).timeout  # a leaseholder died with the killed server: retry
			w = await Canopy.set_props("/Counter", {"n": i})
		if not w.get("ok", false):
			check(false, "write %d: %s" % [i, str(w.get("code"))])
			return
		await get_tree().create_timer(0.05).timeout
	mark("writer_done")


func _watcher() -> void:
	var n := int(arg("n", "60"))
	var made := await Canopy.spawn_node("/", "Counter", "Node", {"n": 0})
	check(made.get("ok", false) or str(made.get("code")) == "name_taken", "/Counter exists")
	var sub := await Canopy.subscribe_subtree("/Counter")
	if not check(sub.active, "subscribed (%s)" % sub.error_code):
		return
	var values: Array[int] = []
	var first: int = int(sub.get_record(sub.root_id).get("props", {}).get("n", 0))
	sub.node_updated.connect(func(rec: Dictionary, props: Dictionary, _changed: bool) -> void:
		if props.has("n"):
			values.append(int(props["n"])))
	var reconnected := [false]
	Canopy.reconnected.connect(func() -> void: reconnected[0] = true)
	check_ok(await Canopy.spawn_node("/", "Watching", "Node"), "the watcher publishes /Watching")
	await wait_until(func() -> bool: return values.size() >= 5, 20000, "the first updates")
	mark("subscribed", {"url": Canopy.current_url})
	if not await wait_until(func() -> bool: return reconnected[0], 20000, "the reconnect after the kill"):
		return
	check(Canopy.current_url != urls()[0], "failed over to another server (%s)" % Canopy.current_url)
	if not await wait_until(func() -> bool: return not values.is_empty() and values[-1] == n, 30000, "n = %d" % n):
		return
	var expected: Array[int] = []
	for i in range(first + 1, n + 1):
		expected.append(i)
	check_eq(values, expected, "every value exactly once, in order, across the reconnect")
	check(sub.resumed_count >= 1, "the subscription was resumed from its resolved timestamp")
	mark("watcher_done", {"values": values.size()})
