class_name ClusterSpawner
extends Node
## Mirrors [MultiplayerSpawner] over a Canopy cluster: nodes spawned under [member spawn_path] on any instance appear
## under the same spawn path on every instance that has a ClusterSpawner for the same cluster parent.
##
## Local spawns (a child with a scene of [member spawnable_scenes] added under the spawn node, or [method spawn] with
## [member spawn_function]) become cluster nodes: a [code]tree_spawn[/code] under [member cluster_path], with type =
## the scene path and props = the values of its [ClusterSynchronizer]s, owned by this instance's session.
## Cluster nodes spawned elsewhere (seen through a subscription of [member cluster_path]) are instantiated here,
## their properties applied before [method Node._ready], and [signal spawned] is emitted. Freeing a spawned node with
## [method Node.queue_free] (or [method despawn]) frees it in the cluster, which despawns it everywhere
## ([signal despawned]).
## [br][br]
## Why not [code]extends MultiplayerSpawner[/code]: a MultiplayerSpawner hooks its spawn node and, with a real
## multiplayer peer, makes SceneMultiplayer replicate the same children itself; its [code]spawn()[/code] is native
## and cannot be overridden. This node keeps the same API names without that machinery. (The synchronizer does extend
## [MultiplayerSynchronizer], for the Replication panel; see [ClusterSynchronizer].)

## A node spawned by another instance was added under the spawn node (like MultiplayerSpawner, not emitted for
## local spawns).
signal spawned(node: Node)
## A node spawned here or elsewhere was despawned because it was freed in the cluster by someone else.
signal despawned(node: Node)
## A local spawn is now a cluster node ([param uuid]).
signal registered(node: Node, uuid: String)
## The cluster parent exists and the subscription's snapshot was applied (remote spawns flow from now on).
signal cluster_ready()

## The node under which spawned nodes are added (like [member MultiplayerSpawner.spawn_path]).
@export_node_path("Node") var spawn_path: NodePath = NodePath("")
## At most this many spawned nodes (local and remote); 0 = no limit.
@export var spawn_limit: int = 0
## Scene paths that are spawned automatically when added under the spawn node, and that remote spawns may use
## (the "Auto Spawn List").
@export var spawnable_scenes: PackedStringArray = PackedStringArray()
## The cluster path of the parent of the spawned nodes, created if missing. Empty = "/" + the spawn node's name.
@export var cluster_path: String = ""
## Region placement for spawned nodes (empty = by hash). A local spawn with the metadata
## [code]canopy_region[/code] (a String, set before it is added) is placed in that region instead.
@export var region: String = ""
## Take ownership of local spawns for this instance's session (so its synchronizers write them).
@export var own_local_spawns: bool = true
## Subscribe to [member cluster_path] to receive remote spawns, changes and despawns.
@export var auto_subscribe: bool = true

## Like [member MultiplayerSpawner.spawn_function]: [code]func(data: Variant) -> Node[/code], returns a node not in the
## tree. Called for [method spawn] here and for custom spawns received from other instances (with the same data).
var spawn_function: Callable

const SPAWN_DATA_PROP := "canopy:spawn_data"

var _client: CanopyClient = null
var _spawn_node: Node = null
var _parent_uuid: String = ""
var _sub: CanopySubscription = null
var _by_uuid: Dictionary = {}
var _uuid_of: Dictionary = {}
var _pending_local: Dictionary = {}
var _remote_despawn: Dictionary = {}
var _adding_remote: bool = false
var _ready_done: bool = false


func _ready() -> void:
	_client = get_node_or_null("/root/Canopy") as CanopyClient
	_spawn_node = get_node_or_null(spawn_path)
	if _spawn_node == null:
		push_error("ClusterSpawner %s: spawn_path %s does not name a node" % [get_path(), spawn_path])
		return
	if cluster_path.is_empty():
		cluster_path = "/" + String(_spawn_node.name)
	_spawn_node.child_entered_tree.connect(_on_child_entered)
	_start()


## Adds a scene path to [member spawnable_scenes].
func add_spawnable_scene(path: String) -> void:
	if not spawnable_scenes.has(path):
		spawnable_scenes.append(path)


func clear_spawnable_scenes() -> void:
	spawnable_scenes.clear()


func get_spawnable_scene(index: int) -> String:
	return spawnable_scenes[index]


func get_spawnable_scene_count() -> int:
	return spawnable_scenes.size()


## Custom spawn (like [method MultiplayerSpawner.spawn]): calls [member spawn_function] with [param data], adds the
## node under the spawn node and registers it in the cluster with [param data] so other instances call their
## spawn_function with the same data. Returns the node (null when refused).
func spawn(data: Variant = null) -> Node:
	if not spawn_function.is_valid() or _spawn_node == null:
		push_error("ClusterSpawner: spawn() needs a spawn_function and a valid spawn_path")
		return null
	if spawn_limit > 0 and _by_uuid.size() + _pending_local.size() >= spawn_limit:
		push_error("ClusterSpawner: spawn limit reached")
		return null
	var node: Node = spawn_function.call(data)
	if node == null or node.is_inside_tree():
		push_error("ClusterSpawner: spawn_function must return a new node that is not in the tree")
		return null
	node.set_meta(&"canopy_spawn_data", data)
	_spawn_node.add_child(node, true)
	return node


## Frees a spawned node here and in the cluster (despawning it everywhere).
func despawn(node: Node) -> void:
	if node != null and is_instance_valid(node):
		node.queue_free()


## The cluster UUID of a spawned node ("" while it is being registered, or not one of ours).
func get_cluster_id(node: Node) -> String:
	return str(_uuid_of.get(node.get_instance_id(), ""))


## The local node of a cluster UUID, or null.
func get_spawned_node(uuid: String) -> Node:
	return _by_uuid.get(uuid)


## The subscription behind this spawner (null before [signal cluster_ready]).
func get_subscription() -> CanopySubscription:
	return _sub


func is_cluster_ready() -> bool:
	return _ready_done


func _start() -> void:
	if _client == null:
		push_error("ClusterSpawner: no Canopy autoload (enable the Canopy plugin)")
		return
	while true:
		if not _client.is_ready():
			if _client.connection_count == 0:
				await _client.connected
			else:
				await _client.reconnected
			continue
		var uuid := await _ensure_path(cluster_path)
		if not uuid.is_empty():
			_parent_uuid = uuid
			break
		await get_tree().create_timer(0.5).timeout
	if auto_subscribe:
		_sub = await _client.subscribe_subtree(_parent_uuid)
		_sub.node_entered.connect(_on_remote_entered)
		_sub.node_updated.connect(_on_remote_updated)
		_sub.node_left.connect(_on_remote_left)
		if _sub.has_snapshot:
			for id in _sub.children_of(_parent_uuid):
				_on_remote_entered(_sub.get_record(id))
		elif not _sub.active:
			push_warning("ClusterSpawner %s: subscribe %s refused (%s); remote spawns will not appear" % [get_path(), cluster_path, _sub.error_code])
			_sub.snapshot_applied.connect(_on_late_snapshot, CONNECT_ONE_SHOT)
	_ready_done = true
	for node: Node in _pending_local.keys():
		_register_local(node)
	cluster_ready.emit()


func _on_late_snapshot() -> void:
	for id in _sub.children_of(_parent_uuid):
		_on_remote_entered(_sub.get_record(id))


# Creates the missing nodes of a path (class "Node"); returns the UUID of its last node, "" on failure.
func _ensure_path(path: String) -> String:
	var parent := "/"
	for part in path.split("/", false):
		var r := await _client.spawn_node(parent, part, "Node")
		if not r.get("ok", false) and str(r.get("code", "")) != "name_taken":
			return ""
		parent = parent.path_join(part) if parent != "/" else "/" + part
	if parent == "/":
		return "00000000-0000-0000-0000-000000000000"
	var read := await _client.read_tree(parent, 0)
	if not read.get("ok", false) or (read["nodes"] as Array).is_empty():
		return ""
	return str(read["nodes"][0]["id"])


func _on_child_entered(node: Node) -> void:
	if _adding_remote or _uuid_of.has(node.get_instance_id()):
		return
	if not node.has_meta(&"canopy_spawn_data") and not spawnable_scenes.has(node.scene_file_path):
		return
	_pending_local[node] = true
	if not node.tree_exiting.is_connected(_on_spawned_exiting):
		node.tree_exiting.connect(_on_spawned_exiting.bind(node))
	if _ready_done:
		_register_local(node)


func _register_local(node: Node) -> void:
	if not is_instance_valid(node) or not _pending_local.has(node):
		return
	var props := {}
	for sync in _synchronizers_of(node):
		props.merge(sync.collect_properties(false))
		props.merge(sync.collect_properties(true))
	var type := node.scene_file_path if not node.scene_file_path.is_empty() else node.get_class()
	if node.has_meta(&"canopy_spawn_data"):
		props[SPAWN_DATA_PROP] = node.get_meta(&"canopy_spawn_data")
	var node_region := str(node.get_meta(&"canopy_region", region))
	var r := await _client.spawn_node(_parent_uuid, String(node.name), type, props, node_region)
	# Still ours unless freed meanwhile (adopted from the subscription before this answer counts as still ours).
	if not is_instance_valid(node) or not (_pending_local.has(node) or _uuid_of.has(node.get_instance_id())):
		if r.get("ok", false):
			_client.free_node(str(r["node"]))  # freed locally while it was being registered
		return
	_pending_local.erase(node)
	if not r.get("ok", false):
		push_error("ClusterSpawner: cannot register %s in the cluster: %s %s" % [node.name, r.get("code"), r.get("message")])
		return
	var uuid := str(r["node"])
	if _by_uuid.has(uuid) and _by_uuid[uuid] != node:
		return
	_map(node, uuid)
	var syncs := _synchronizers_of(node)
	for sync in syncs:
		sync._bind(_client, uuid, "", node_region)
	if own_local_spawns:
		var own := await _client.take_ownership([uuid])
		if own.get("ok", false) and is_instance_valid(node):
			for sync in syncs:
				sync._set_owner(_client.session_id, str(own.get("ts", "")))
		elif not own.get("ok", false):
			push_warning("ClusterSpawner: cannot take ownership of %s: %s" % [node.name, own.get("code")])
	registered.emit(node, uuid)


func _on_remote_entered(rec: Dictionary) -> void:
	var uuid := str(rec.get("id", ""))
	if str(rec.get("parent", "")) != _parent_uuid or _by_uuid.has(uuid) or uuid.is_empty():
		return
	var node_name := str(rec.get("name", ""))
	# Our own spawn, seen through the subscription before its tree_spawn answer: adopt it.
	for pending: Node in _pending_local.keys():
		if is_instance_valid(pending) and String(pending.name) == node_name:
			_map(pending, uuid)
			return
	if spawn_limit > 0 and _by_uuid.size() >= spawn_limit:
		push_warning("ClusterSpawner: spawn limit reached; %s not spawned" % node_name)
		return
	var props: Dictionary = rec.get("props", {})
	var node := _instantiate(str(rec.get("type", "")), props)
	if node == null:
		return
	node.name = node_name
	var owner_id: Variant = rec.get("owner")
	for sync in _synchronizers_of(node):
		sync._bind(_client, uuid, "" if owner_id == null else str(owner_id), "" if rec.get("region") == null else str(rec["region"]))
		sync.apply_properties(props)
	_map(node, uuid)
	node.tree_exiting.connect(_on_spawned_exiting.bind(node))
	_adding_remote = true
	_spawn_node.add_child(node)
	_adding_remote = false
	spawned.emit(node)


func _on_remote_updated(rec: Dictionary, _props: Dictionary, record_changed: bool) -> void:
	var uuid := str(rec.get("id", ""))
	if not record_changed:
		return
	var node: Node = _by_uuid.get(uuid)
	if node != null and str(rec.get("parent", "")) != _parent_uuid:
		_on_remote_left(rec)  # moved away from the spawn parent (deeper in the subtree)
	elif node == null and str(rec.get("parent", "")) == _parent_uuid:
		_on_remote_entered(rec)  # moved under it
	elif node != null and String(node.name) != str(rec.get("name", node.name)):
		node.name = str(rec.get("name"))


func _on_remote_left(rec: Dictionary) -> void:
	var uuid := str(rec.get("id", ""))
	var node: Node = _by_uuid.get(uuid)
	if node == null:
		return
	_unmap(node)
	if is_instance_valid(node):
		_remote_despawn[node.get_instance_id()] = true
		if node.is_inside_tree():
			node.get_parent().remove_child(node)
		node.queue_free()
		despawned.emit(node)


func _on_spawned_exiting(node: Node) -> void:
	var id := node.get_instance_id()
	if _remote_despawn.has(id):
		_remote_despawn.erase(id)
		return
	_pending_local.erase(node)
	var uuid := str(_uuid_of.get(id, ""))
	if uuid.is_empty():
		return
	# queue_free()/free() of a spawned node despawns it everywhere; leaving the tree otherwise (the game quitting, a
	# scene change, remove_child) does not touch the cluster.
	if node.is_queued_for_deletion():
		_unmap(node)
		_client.free_node(uuid)


func _instantiate(type: String, props: Dictionary) -> Node:
	if props.has(SPAWN_DATA_PROP) and spawn_function.is_valid():
		var custom: Node = spawn_function.call(props[SPAWN_DATA_PROP])
		if custom != null:
			custom.set_meta(&"canopy_spawn_data", props[SPAWN_DATA_PROP])
		return custom
	if type.begins_with("res://"):
		if not spawnable_scenes.has(type):
			push_warning("ClusterSpawner: %s is not in spawnable_scenes; not spawned" % type)
			return null
		var scene := load(type) as PackedScene
		return scene.instantiate() if scene != null else null
	if spawnable_scenes.has(type) and ClassDB.can_instantiate(type) and ClassDB.is_parent_class(type, "Node"):
		return ClassDB.instantiate(type) as Node
	return null


func _map(node: Node, uuid: String) -> void:
	_by_uuid[uuid] = node
	_uuid_of[node.get_instance_id()] = uuid
	_pending_local.erase(node)


func _unmap(node: Node) -> void:
	var uuid := str(_uuid_of.get(node.get_instance_id(), ""))
	_uuid_of.erase(node.get_instance_id())
	_by_uuid.erase(uuid)


static func _synchronizers_of(node: Node) -> Array[ClusterSynchronizer]:
	var out: Array[ClusterSynchronizer] = []
	var stack: Array[Node] = [node]
	while not stack.is_empty():
		var n: Node = stack.pop_back()
		if n is ClusterSynchronizer:
			out.append(n)
		for c in n.get_children():
			stack.append(c)
	return out
