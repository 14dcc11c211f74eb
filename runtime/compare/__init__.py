"""The experiment scheduler of the chapter's last exercise: partition over K devices, or a smaller minibatch?"""
