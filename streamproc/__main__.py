from streamproc.cli import main

if __name__ == "__main__":  # not when a spawned child (the explanation process) imports it
    main()
