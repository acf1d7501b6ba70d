class_name CanopySubscription
extends RefCounted
## A live copy of part of a cluster tree (a subtree or a region), made by [method CanopyClient.subscribe_subtree] or
## [method CanopyClient.subscribe_region].
##
## [member nodes] maps each node's UUID to its record Dictionary ([code]id, parent, name, type, kind, owner, region,
## props[/code], as [method CanopyClient.read_tree] returns them). It starts as the server's snapshot and then changes one
## whole [code]sub_batch[/code] at a time: after each batch it equals the tree at [member resolved]. The per-node
## signals of a batch are emitted after the whole batch is applied, in event order, then [signal batch_applied].
## After a reconnect the client resumes the subscription from [member resolved] (no gap, no repeat).

## The snapshot was applied (once, when the subscription starts).
signal snapshot_applied()
## A node entered the subscription (spawned, or moved into it).
signal node_entered(node: Dictionary)
## A node changed: [param props] holds the changed properties (nil = deleted); [param record_changed] is true when
## its parent, name, type, owner or region changed.
signal node_updated(node: Dictionary, props: Dictionary, record_changed: bool)
## A node left the subscription (freed, or moved out of it); [param node] is its last record.
signal node_left(node: Dictionary)
## A batch was applied; the copy now equals the tree at [param resolved].
signal batch_applied(resolved: String, events: Array)
## The subscription ended for good (its root was freed, or the server refused it).
signal ended(code: String, message: String)

## "subtree" or "region".
var kind: String = ""
## The subtree's root (path or UUID) or the region id.
var target: String = ""
var tree_name: String = ""
## UUID -> node record Dictionary.
var nodes: Dictionary = {}
## The UUID of the subtree's root (from the snapshot), or "" for a region.
var root_id: String = ""
## The last applied resolved timestamp ("wall.logical"); resubscriptions resume from it.
var resolved: String = ""
## The server id of the subscription on the current connection, -1 while (re)subscribing.
var sub_id: int = -1
## Subscribed on the current connection.
var active: bool = false
var has_snapshot: bool = false
## The last refusal's error code ("" when none).
var error_code: String = ""
var batches_applied: int = 0
var events_applied: int = 0
## How many times it was resumed (from_ts) after a reconnect or a server-side end.
var resumed_count: int = 0

var _client: CanopyClient
var _in_flight: bool = false
var _retry_at_ms: int = 0


func _init(client: CanopyClient, tree: String, sub_kind: String, sub_target: String) -> void:
	_client = client
	tree_name = tree
	kind = sub_kind
	target = sub_target


## The record of a node, or an empty Dictionary.
func get_record(uuid: String) -> Dictionary:
	return nodes.get(uuid, {})


## The UUIDs of the direct children of [param uuid] in the copy.
func children_of(uuid: String) -> PackedStringArray:
	var out := PackedStringArray()
	for id: String in nodes:
		if str(nodes[id].get("parent", "")) == uuid:
			out.append(id)
	return out


func _apply_snapshot(ts: String, snapshot: Array) -> void:
	nodes.clear()
	for n: Dictionary in snapshot:
		var rec := n.duplicate()
		rec["props"] = (n.get("props", {}) as Dictionary).duplicate()
		nodes[str(n.get("id", ""))] = rec
	if kind == "subtree" and not snapshot.is_empty():
		root_id = str(snapshot[0].get("id", ""))
	resolved = ts
	has_snapshot = true
	snapshot_applied.emit()


func _apply_batch(batch_resolved: String, events: Array) -> void:
	# Apply the whole batch first, then notify: listeners only ever see the copy at a resolved timestamp.
	var notes: Array = []
	for ev: Dictionary in events:
		var uuid := str(ev.get("node", ""))
		match str(ev.get("event", "")):
			"enter":
				var rec := {"id": uuid}
				for k in ["parent", "name", "type", "kind", "owner", "region"]:
					rec[k] = ev.get(k)
				rec["props"] = (ev.get("props", {}) as Dictionary).duplicate()
				nodes[uuid] = rec
				notes.append(["enter", rec, {}, false])
			"update":
				var rec: Dictionary = nodes.get(uuid, {})
				if rec.is_empty():
					rec = {"id": uuid, "props": {}}
					nodes[uuid] = rec
				var record_changed := ev.has("parent")
				if record_changed:
					for k in ["parent", "name", "type", "kind", "owner", "region"]:
						rec[k] = ev.get(k)
				var changed: Dictionary = ev.get("props", {})
				var props: Dictionary = rec["props"]
				for p: String in changed:
					if changed[p] == null:
						props.erase(p)
					else:
						props[p] = changed[p]
				notes.append(["update", rec, changed, record_changed])
			"leave":
				var rec: Dictionary = nodes.get(uuid, {"id": uuid, "props": {}})
				nodes.erase(uuid)
				notes.append(["leave", rec, {}, false])
	resolved = batch_resolved
	batches_applied += 1
	events_applied += events.size()
	for n: Array in notes:
		match n[0]:
			"enter":
				node_entered.emit(n[1])
			"update":
				node_updated.emit(n[1], n[2], n[3])
			"leave":
				node_left.emit(n[1])
	batch_applied.emit(resolved, events)
