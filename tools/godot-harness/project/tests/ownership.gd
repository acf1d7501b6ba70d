extends CanopyTest
## Ownership: a spawns Hero (owned by a's session). b, on another server, cannot write it (not_owner naming a's
## session) nor take it (a's lease is live). a hands it off to b with a final hp in one transaction; a's synchronizer
## reports ownership_lost and a's own writes are then refused; b owns it (refresh_ownership) and its writes land.
## Release: a's own_release of b's node is refused (not_owner); b's synchronizer releases it (final values written,
## owner nil, ownership_lost), a second own_release of the now unowned node is accepted (skipped), and a takes it
## back with its synchronizer, whose writes land again.

const PATH := "/Players/Hero"


func run() -> void:
	if not await connect_canopy():
		return
	if arg("role") == "a":
		await _role_a()
	else:
		await _role_b()


func _read(path: String) -> Dictionary:
	var r := await Canopy.read_tree(path, 0)
	return r["nodes"][0] if r.get("ok", false) else {}


func _role_a() -> void:
	var world := TestWorld.create(self, false)
	if not await wait_until(world.spawner.is_cluster_ready, 15000, "the spawner's cluster parent"):
		return
	var hero := world.add_player("Hero", Vector2(1, 1), 50)
	var sync := TestWorld.sync_of(hero)
	var lost := [0]
	sync.ownership_lost.connect(func() -> void: lost[0] += 1)
	if not await wait_until(sync.is_owner, 15000, "Hero to be registered and owned"):
		return
	# b publishes its session id and, once refused, a flag on its own node /B.
	var b := {}
	if not await poll_until(func() -> bool:
		var rec := await _read("/B")
		b.merge(rec, true)
		return rec.get("props", {}).get("refused", false) == true,
		30000, "b to be refused"):
		return
	var b_session := str(b["props"]["session"])
	hero.set("hp", 77)
	step = "handing off"
	check(await sync.handoff_to(b_session), "handoff_to(b) succeeds")
	check(not sync.is_owner(), "a no longer owns Hero")
	check_eq(lost[0], 1, "ownership_lost emitted once")
	var rec := await _read(PATH)
	check_eq(str(rec.get("owner")), b_session, "the cluster names b as the owner")
	check_eq(rec.get("props", {}).get(".:hp"), 77, "the handoff wrote a's final hp")
	var late := await Canopy.set_props(PATH, {".:hp": 1})
	check_eq(str(late.get("code", "")), "not_owner", "a's own write is refused after the handoff")
	hero.set("hp", 2)  # the synchronizer must not try to write any more
	await get_tree().create_timer(0.3).timeout
	var after := await _read(PATH)
	check(after.get("props", {}).get(".:hp") != 2, "a's synchronizer stopped writing")
	# Release: wait for b's own write (b owns Hero now), then try to release b's node.
	if not await poll_until(func() -> bool: return (await _read(PATH)).get("props", {}).get(".:hp") == 78, 20000, "b's write of hp 78"):
		return
	var rel := await Canopy.release_ownership([PATH])
	check_eq(str(rel.get("code", "")), "not_owner", "a cannot release b's node")
	check_eq(str(rel.get("owner", "")), b_session, "the refusal names b as the owner")
	check_ok(await Canopy.set_props("/B", {"a_release_refused": true}), "a tells b")
	# b releases, then releases again (a no-op on an unowned node), then tells a: only then may a take it back.
	if not await poll_until(func() -> bool: return (await _read("/B")).get("props", {}).get("b_released", false) == true,
		20000, "b to release Hero"):
		return
	check((await _read(PATH)).get("owner") == null, "Hero has no owner after b's release")
	check_eq((await _read(PATH)).get("props", {}).get(".:hp"), 79, "b's release wrote its final hp first")
	var gained := [0]
	sync.ownership_gained.connect(func() -> void: gained[0] += 1)
	check(await sync.take_ownership(), "a takes the released node back")
	check(sync.is_owner() and gained[0] == 1, "a's synchronizer owns it again (ownership_gained once)")
	hero.set("hp", 90)
	await poll_until(func() -> bool: return (await _read(PATH)).get("props", {}).get(".:hp") == 90, 15000, "a's synchronizer to write again")
	mark("a_done")


func _role_b() -> void:
	var mine := await Canopy.spawn_node("/", "B", "Node", {"session": Canopy.session_id})
	if not check_ok(mine, "b publishes its session"):
		return
	if not await poll_until(func() -> bool: return not (await _read(PATH)).is_empty() and (await _read(PATH)).get("owner") != null,
		30000, "Hero to exist and be owned"):
		return
	var w := await Canopy.set_props(PATH, {".:hp": 5})
	check_eq(str(w.get("code", "")), "not_owner", "b cannot write a's node")
	check(w.get("owner") != null and str(w.get("owner")) != Canopy.session_id, "the error names the owner (a)")
	var t := await Canopy.take_ownership([PATH])
	check_eq(str(t.get("code", "")), "not_owner", "b cannot take a node whose owner's lease is live")
	check(t.has("expires_at_ms"), "the refusal says when the lease expires")
	check_ok(await Canopy.set_props("/B", {"refused": true}), "b tells a")
	if not await poll_until(func() -> bool: return str((await _read(PATH)).get("owner")) == Canopy.session_id,
		30000, "the handoff to b"):
		return
	var rec := await _read(PATH)
	check_eq(rec.get("props", {}).get(".:hp"), 77, "b sees a's final hp from the handoff")
	# b continues through its own synchronizer bound to the node.
	var player: Node2D = (load(TestWorld.PLAYER_SCENE) as PackedScene).instantiate()
	var sync := TestWorld.sync_of(player)
	add_child(player)
	sync._bind(Canopy, str(rec["id"]), "")
	check(await sync.refresh_ownership(), "refresh_ownership: b owns Hero")
	player.set("hp", 78)
	await poll_until(func() -> bool: return (await _read(PATH)).get("props", {}).get(".:hp") == 78, 15000, "b's write")
	if not await poll_until(func() -> bool: return (await _read("/B")).get("props", {}).get("a_release_refused", false) == true,
		30000, "a's refused release"):
		return
	check(sync.is_owner(), "b still owns Hero after a's refused release")
	var lost := [0]
	sync.ownership_lost.connect(func() -> void: lost[0] += 1)
	player.set("hp", 79)  # not yet written by the synchronizer: release_ownership writes it as a final value
	check(await sync.release_ownership(), "b's release_ownership succeeds")
	check(not sync.is_owner() and lost[0] == 1, "b's synchronizer no longer owns Hero (ownership_lost once)")
	var released := await _read(PATH)
	check(released.get("owner") == null, "the cluster has no owner for Hero")
	check_ok(await Canopy.release_ownership([PATH]), "own_release of an unowned node is accepted (skipped)")
	check_ok(await Canopy.set_props("/B", {"b_released": true}), "b tells a")
	mark("b_done")
