extends CanopyTest
## Items move between two keys on different ranges ("b..." is in the first user range, "x..." in the last) in
## transactions whose bodies await their reads. Roles mover1/mover2 each move --moves items one by one (concurrently:
## conflicts are retried); role reader reads both keys in one transaction again and again and checks every snapshot
## holds all the items (chest + bag = TOTAL) and that bag never goes down, until it has seen every move.

const TOTAL := 100


func _chest() -> String:
	return "b/%s/chest" % arg("tree")


func _bag() -> String:
	return "x/%s/bag" % arg("tree")


func run() -> void:
	if not await connect_canopy():
		return
	match arg("role"):
		"mover1", "mover2":
			await _mover()
		_:
			await _reader()


func _mover() -> void:
	var init := await Canopy.transaction(func(txn: CanopyTransaction) -> bool:
		if await txn.has_key(_chest()):
			return false
		txn.put(_chest(), TOTAL)
		txn.put(_bag(), 0)
		return true)
	check_eq(str(init["status"]), "committed", "the init transaction commits")
	var moves := int(arg("moves", "10"))
	var committed := 0
	var retried := 0
	for i in moves:
		step = "move %d" % i
		var r := await Canopy.transaction(func(txn: CanopyTransaction) -> int:
			var chest: int = await txn.get_value(_chest(), -1)
			var bag: int = await txn.get_value(_bag(), -1)
			if chest <= 0 or bag < 0:
				txn.abort()
				return -1
			txn.put(_chest(), chest - 1)
			txn.put(_bag(), bag + 1)
			return bag + 1, {"max_attempts": 20})
		if str(r["status"]) == "committed":
			committed += 1
			retried += int(r["attempts"]) - 1
		else:
			check(false, "move %d: %s" % [i, str(r)])
	check_eq(committed, moves, "every move commits")
	mark("mover_done", {"committed": committed, "retries": retried})


func _reader() -> void:
	var expect := int(arg("expect", "20"))
	var reads := 0
	var bad := 0
	var last_bag := -1
	var deadline := now_ms() + 40000
	while now_ms() < deadline:
		step = "read %d (bag %d)" % [reads, last_bag]
		var r := await Canopy.transaction(func(txn: CanopyTransaction) -> Array:
			return [await txn.get_value(_chest(), null), await txn.get_value(_bag(), null)])
		if str(r["status"]) != "committed":
			continue
		var pair: Array = r["value"]
		if pair[0] == null:
			continue  # not initialised yet
		reads += 1
		var chest: int = pair[0]
		var bag: int = pair[1]
		if chest + bag != TOTAL or bag < last_bag:
			bad += 1
			check(false, "read %d saw chest %d + bag %d (previous bag %d)" % [reads, chest, bag, last_bag])
		last_bag = bag
		if bag >= expect:
			break
	check_eq(last_bag, expect, "the reader saw every move")
	check_eq(bad, 0, "every snapshot holds all %d items" % TOTAL)
	check(reads >= 3, "the reader read several snapshots (%d)" % reads)
	mark("reader_done", {"reads": reads})
