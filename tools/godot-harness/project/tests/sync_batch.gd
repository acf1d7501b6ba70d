extends CanopyTest
## Batched writes: role a spawns --n players through a ClusterSpawner placed in a region, then changes every
## player's seq (and position) every frame for --frames frames through their ClusterSynchronizers. All the changes of
## a frame must go out as ONE tree_set_many (one transaction for every node, with region hints), one at a time
## (coalescing frames while one is in flight), and no tree_set. Role b (another server) subscribes through its own
## spawner: every node's seq values arrive in increasing order, and after every batch all the nodes carry the SAME
## seq (each write was one transaction for all of them, so a consistent cut never splits it).

const REGION := "batch-zone"


func run() -> void:
	if not await connect_canopy():
		return
	if arg("role") == "a":
		await _role_a()
	else:
		await _role_b()


func _role_a() -> void:
	var n := int(arg("n", "20"))
	var frames := int(arg("frames", "40"))
	var world := TestWorld.create(self, false)
	world.spawner.region = REGION
	if not await wait_until(world.spawner.is_cluster_ready, 15000, "a's spawner"):
		return
	await poll_until(func() -> bool: return (await Canopy.read_tree("/B_ready", 0)).get("ok", false), 30000, "b to be ready")
	var players: Array[Node2D] = []
	for i in n:
		players.append(world.add_player("P%d" % i, Vector2(i, 0), 100))
	if not await wait_until(func() -> bool:
		for p in players:
			if not TestWorld.sync_of(p).is_owner():
				return false
		return true, 20000, "all %d players registered and owned" % n):
		return
	check_eq(TestWorld.sync_of(players[0]).cluster_region, REGION, "the synchronizer knows its node's region (hint)")
	if not await wait_until(func() -> bool: return not Canopy.has_pending_writes(), 10000, "the first writes to settle"):
		return
	var before: Dictionary = Canopy.batch_stats.duplicate()
	var sets_before := int(Canopy.op_counts.get("tree_set", 0))
	for f in range(1, frames + 1):
		step = "frame %d" % f
		for p in players:
			p.set("seq", f)
			p.position = Vector2(p.position.x, f)
		await get_tree().process_frame
	if not await wait_until(func() -> bool: return not Canopy.has_pending_writes(), 15000, "the batched writes to finish"):
		return
	var requests := int(Canopy.batch_stats["requests"]) - int(before["requests"])
	var nodes := int(Canopy.batch_stats["nodes"]) - int(before["nodes"])
	check(requests >= 1 and requests <= frames, "at most one tree_set_many per frame (%d for %d frames)" % [requests, frames])
	check_eq(nodes, requests * n, "every tree_set_many carried all %d nodes (%d node writes in %d requests)" % [n, nodes, requests])
	check_eq(int(Canopy.batch_stats["max_nodes"]), n, "the largest batch is all the nodes")
	check_eq(int(Canopy.op_counts.get("tree_set", 0)) - sets_before, 0, "no single-node tree_set")
	check_eq(int(Canopy.batch_stats["dropped"]), 0, "nothing dropped")
	var coalesced := int(Canopy.batch_stats["coalesced"]) - int(before["coalesced"])
	check(requests == frames or coalesced > 0, "frames made while a write was in flight were coalesced (%d)" % coalesced)
	var r := await Canopy.read_tree("/Players", 1)
	if check_ok(r, "read the players back"):
		var final_ok := 0
		for rec: Dictionary in r["nodes"]:
			if str(rec["name"]).begins_with("P") and rec["props"].get(".:seq") == frames and str(rec.get("region")) == REGION:
				final_ok += 1
		check_eq(final_ok, n, "every player holds the last seq, placed in the region")
	mark("a_done", {"requests": requests, "nodes": nodes, "frames": frames, "coalesced": coalesced})


func _role_b() -> void:
	var n := int(arg("n", "20"))
	var frames := int(arg("frames", "40"))
	var world := TestWorld.create(self, true)
	if not await wait_until(world.spawner.is_cluster_ready, 15000, "b's spawner"):
		return
	var sub := world.spawner.get_subscription()
	var split_batches: Array[String] = []
	var distinct := [0]
	var last_seq := [-1]
	var per_node_in_order := [true]
	var last_by_node := {}
	sub.batch_applied.connect(func(resolved: String, _events: Array) -> void:
		var seqs := {}
		var count := 0
		for uuid: String in sub.nodes:
			var rec: Dictionary = sub.nodes[uuid]
			if not str(rec.get("name", "")).begins_with("P") or str(rec.get("parent")) != sub.root_id:
				continue
			count += 1
			var s: int = int(rec["props"].get(".:seq", 0))
			seqs[s] = true
			if s < int(last_by_node.get(uuid, 0)):
				per_node_in_order[0] = false
			last_by_node[uuid] = s
		if count == n:
			if seqs.size() != 1:
				split_batches.append("%s: %s" % [resolved, str(seqs.keys())])
			elif int(seqs.keys()[0]) != last_seq[0]:
				distinct[0] += 1
				last_seq[0] = int(seqs.keys()[0]))
	check_ok(await Canopy.spawn_node("/", "B_ready", "Node"), "b publishes /B_ready")
	if not await wait_until(func() -> bool: return last_seq[0] == frames, 30000, "every player's seq %d" % frames):
		return
	check_eq(world.players.get_child_count(), n, "b's spawner instantiated every player")
	check(split_batches.is_empty(), "no batch splits a frame's write across nodes: %s" % str(split_batches.slice(0, 3)))
	check(per_node_in_order[0], "every node's seq only goes up")
	check(distinct[0] >= 2, "several frames' writes observed (%d)" % distinct[0])
	var p0 := world.players.get_node_or_null("P0") as Node2D
	if p0 != null:
		await wait_until(func() -> bool: return int(p0.get("seq")) == frames, 5000, "P0's synchronizer to apply the last seq")
		check_eq(p0.position, Vector2(0, frames), "P0's position applied by its synchronizer")
	mark("b_done", {"distinct": distinct[0]})
