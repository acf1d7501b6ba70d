extends CanopyTest
## Role a: spawns a player through a ClusterSpawner (a local spawn becomes a cluster node owned by a's session) and
## changes its properties through its ClusterSynchronizer. Role b, connected to another server, reads them back
## with tree_read until it sees the final values.

const PATH := "/Players/Hero"


func run() -> void:
	if not await connect_canopy():
		return
	if arg("role") == "a":
		await _role_a()
	else:
		await _role_b()


func _role_a() -> void:
	var world := TestWorld.create(self, false)
	if not await wait_until(world.spawner.is_cluster_ready, 15000, "the spawner's cluster parent"):
		return
	var hero := world.add_player("Hero", Vector2(10, 20), 100)
	var sync := TestWorld.sync_of(hero)
	step = "registering Hero"
	if not await wait_until(func() -> bool: return sync.is_owner(), 15000, "Hero to be registered and owned"):
		return
	check(sync.is_owner(), "the spawning session owns its spawn")
	check_eq(sync.get_cluster_id(), world.spawner.get_cluster_id(hero), "the synchronizer knows the cluster node")
	var first := await Canopy.read_tree(PATH, 0)
	if check_ok(first, "tree_read of the new node"):
		var rec: Dictionary = first["nodes"][0]
		check_eq(str(rec["type"]), TestWorld.PLAYER_SCENE, "type = the scene path")
		check_eq(rec["props"].get(".:position"), Vector2(10, 20), "spawn property position")
		check_eq(rec["props"].get(".:hp"), 100, "spawn property hp")
		check_eq(str(rec["owner"]), Canopy.session_id, "owner = this session")
	hero.position = Vector2(5, 6)
	hero.set("hp", 42)
	hero.set("seq", 7)
	await poll_until(func() -> bool:
		var r := await Canopy.read_tree(PATH, 0)
		return r.get("ok", false) and r["nodes"][0]["props"].get(".:hp") == 42 and r["nodes"][0]["props"].get(".:seq") == 7,
		15000, "the synchronizer's write")
	mark("a_done", {"session": Canopy.session_id, "node": sync.get_cluster_id()})


func _role_b() -> void:
	var seen := {}
	var ok := await poll_until(func() -> bool:
		var r := await Canopy.read_tree(PATH, 0)
		if not r.get("ok", false):
			return false
		seen.clear()
		seen.merge(r["nodes"][0])
		return seen["props"].get(".:hp") == 42 and seen["props"].get(".:seq") == 7,
		30000, "Hero's final values on another server")
	if not ok:
		return
	check_eq(seen["props"].get(".:position"), Vector2(5, 6), "position written by a")
	check_eq(str(seen["name"]), "Hero", "name")
	check(seen.get("owner") != null and str(seen["owner"]) != Canopy.session_id, "owned by a's session, not b's")
	mark("b_done", {"owner": str(seen.get("owner")), "server": Canopy.current_url})
