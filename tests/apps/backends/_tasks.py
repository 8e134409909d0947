"""One task for every app here, so the doctor has something to load."""


def register(app):
    @app.task(name="backends.add")
    def add(x, y):
        return x + y

    return add
