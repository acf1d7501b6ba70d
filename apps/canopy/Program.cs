using Canopy.Cli;

// The `canopy` command line. Everything (parsing, error reporting, exit codes) lives in CanopyCli
// so that it can be driven with captured writers.
return await CanopyCli.RunAsync(args, Console.Out, Console.Error);
