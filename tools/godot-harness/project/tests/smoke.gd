extends CanopyTest
## Connects, pings, opens a session, spawns, reads.


func run() -> void:
	if not await connect_canopy():
		return
	check_ok(await Canopy.ping(), "ping")
	var r := await Canopy.spawn_node("/", "Smoke", "Node", {"hp": 3})
	check_ok(r, "tree_spawn")
	var read := await Canopy.read_tree("/Smoke")
	check_ok(read, "tree_read")
	if read.get("ok", false):
		check_eq(read["nodes"][0]["props"].get("hp"), 3, "the property comes back")
	mark("done", {"session": Canopy.session_id})
