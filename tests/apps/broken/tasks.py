from broken import app


@app.task
def fine():
    return 1


def oops(:
    pass
