extends CanopyTest
## Needs `subscribe` on the server. Role a spawns Hero and Sidekick through its ClusterSpawner and writes Hero's seq
## 1..N through Hero's ClusterSynchronizer, one committed batch at a time, then frees Sidekick and publishes /Done. Role b's ClusterSpawner instantiates
## both (spawned), sees every seq value in order through its ClusterSynchronizer, and sees Sidekick despawned.
## Role c joins late (after /Done) and must get the whole current tree: Hero with seq N, no Sidekick.

const PATH := "/Players/Hero"


func run() -> void:
	if not await connect_canopy():
		return
	match arg("role"):
		"a":
			await _role_a()
		"b":
			await _role_b()
		_:
			await _role_c()


func _role_a() -> void:
	var n := int(arg("n", "30"))
	var world := TestWorld.create(self, true)
	if not await wait_until(world.spawner.is_cluster_ready, 15000, "a's spawner"):
		return
	check(world.spawner.get_subscription() != null and world.spawner.get_subscription().active, "a's spawner is subscribed")
	# Wait for b to be subscribed (it publishes /B_ready) so it sees the spawns as they happen.
	await poll_until(func() -> bool: return (await Canopy.read_tree("/B_ready", 0)).get("ok", false), 30000, "b to be ready")
	var hero := world.add_player("Hero", Vector2(3, 4), 10)
	var sidekick := world.add_player("Sidekick", Vector2(7, 8), 5)
	var sync := TestWorld.sync_of(hero)
	if not await wait_until(func() -> bool: return sync.is_owner() and TestWorld.sync_of(sidekick).is_owner(), 15000, "both spawns registered"):
		return
	# Through the synchronizer (the owner's only writer), one committed batch per value.
	for i in range(1, n + 1):
		step = "seq %d" % i
		hero.set("seq", i)
		await get_tree().process_frame
		if not await wait_until(func() -> bool: return not Canopy.has_pending_writes(), 10000, "seq %d to be written" % i):
			return
	var w := await Canopy.read_tree(PATH, 0)
	check(w.get("ok", false) and w["nodes"][0]["props"].get(".:seq") == n, "the synchronizer wrote seq %d" % n)
	await poll_until(func() -> bool: return (await Canopy.read_tree("/B_saw_all", 0)).get("ok", false), 30000, "b to see every seq")
	sidekick.queue_free()
	await poll_until(func() -> bool: return (await Canopy.read_tree("/Players/Sidekick", 0)).get("code", "") == "not_found", 15000, "Sidekick freed in the cluster")
	check_ok(await Canopy.spawn_node("/", "Done", "Node"), "a publishes /Done")
	mark("a_done")


func _role_b() -> void:
	var n := int(arg("n", "30"))
	var world := TestWorld.create(self, true)
	var spawned: Array[Node] = []
	var despawned: Array[String] = []
	world.spawner.spawned.connect(func(node: Node) -> void: spawned.append(node))
	world.spawner.despawned.connect(func(node: Node) -> void: despawned.append(String(node.name)))
	if not await wait_until(world.spawner.is_cluster_ready, 15000, "b's spawner"):
		return
	check_ok(await Canopy.spawn_node("/", "B_ready", "Node"), "b publishes /B_ready")
	if not await wait_until(func() -> bool: return world.players.has_node("Hero") and world.players.has_node("Sidekick"), 20000, "a's spawns to appear in b"):
		return
	check_eq(spawned.size(), 2, "spawned emitted for each remote spawn")
	var hero: Node2D = world.players.get_node("Hero")
	check_eq(hero.scene_file_path, TestWorld.PLAYER_SCENE, "instantiated from the spawnable scene")
	check_eq(hero.position, Vector2(3, 4), "spawn properties applied")
	check(not TestWorld.sync_of(hero).is_owner(), "b does not own a's spawn")
	var seen: Array[int] = []
	TestWorld.sync_of(hero).cluster_synchronized.connect(func() -> void:
		if seen.is_empty() or seen[-1] != int(hero.get("seq")):
			seen.append(int(hero.get("seq"))))
	if not await wait_until(func() -> bool: return int(hero.get("seq")) == n, 20000, "seq %d" % n):
		return
	var in_order := true
	for i in range(1, seen.size()):
		in_order = in_order and seen[i] > seen[i - 1]
	check(in_order, "seq values arrive in commit order: %s" % str(seen))
	check(seen.size() >= 2, "several distinct updates observed (%d)" % seen.size())
	check_ok(await Canopy.spawn_node("/", "B_saw_all", "Node"), "b publishes /B_saw_all")
	if await wait_until(func() -> bool: return despawned.has("Sidekick"), 20000, "Sidekick despawned in b"):
		check(not world.players.has_node("Sidekick"), "Sidekick is gone from b's tree")
	mark("b_done", {"seen": seen.size()})


func _role_c() -> void:
	var n := int(arg("n", "30"))
	await poll_until(func() -> bool: return (await Canopy.read_tree("/Done", 0)).get("ok", false), 40000, "a to finish")
	var world := TestWorld.create(self, true)
	if not await wait_until(world.spawner.is_cluster_ready, 15000, "c's spawner"):
		return
	await wait_until(func() -> bool: return world.players.has_node("Hero"), 5000, "Hero in the late joiner")
	check(not world.players.has_node("Sidekick"), "the late joiner does not get the freed Sidekick")
	if world.players.has_node("Hero"):
		check_eq(int(world.players.get_node("Hero").get("seq")), n, "the late joiner gets the current seq")
	mark("c_done")
