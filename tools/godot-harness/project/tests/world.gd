class_name TestWorld
extends Node
## A small world for the tests: Players (the spawn node) and a ClusterSpawner for the player scene.

const PLAYER_SCENE := "res://tests/scenes/player.tscn"

var players: Node
var spawner: ClusterSpawner


static func create(parent: Node, subscribe: bool) -> TestWorld:
	var world := TestWorld.new()
	world.name = "World"
	world.players = Node.new()
	world.players.name = "Players"
	world.add_child(world.players)
	world.spawner = ClusterSpawner.new()
	world.spawner.name = "PlayerSpawner"
	world.spawner.spawn_path = NodePath("../Players")
	world.spawner.add_spawnable_scene(PLAYER_SCENE)
	world.spawner.auto_subscribe = subscribe
	world.add_child(world.spawner)
	parent.add_child(world)
	return world


## Instantiates the player scene under Players (the spawner registers it in the cluster).
func add_player(player_name: String, position: Vector2, hp: int) -> Node2D:
	var p: Node2D = (load(PLAYER_SCENE) as PackedScene).instantiate()
	p.name = player_name
	p.position = position
	p.set("hp", hp)
	players.add_child(p)
	return p


static func sync_of(player: Node) -> ClusterSynchronizer:
	return player.get_node("Sync") as ClusterSynchronizer
